"""The study's report: results tables, plots and grids, docs/results.md."""

import glob
import json
import os
import re
import shutil
import statistics


from sslocr_jax import paths
from sslocr_jax.study import plan
from sslocr_jax.study import runner

READING_START, READING_END = "<!-- reading:start -->", "<!-- reading:end -->"
READING_PLACEHOLDER = (
  "_To be written by a person after reading the tables and plots. The "
  "driver states no conclusions; the comparisons above are arithmetic "
  "only._"
)


def spread(values: list[float]) -> dict:
  return dict(
    mean=statistics.fmean(values),
    n=len(values),
    min=min(values),
    max=max(values),
    std=statistics.stdev(values) if len(values) > 1 else 0.0,
  )


def collect(runs: list[dict], study_dir: str) -> dict:
  """{set: {protocol: {arm: {fraction: {"accuracy": spread, "one_minus_ned": spread}}}}}."""
  raw, state = {}, runner.states(runs, study_dir)
  for run in runs:
    if run["kind"] != "evaluate" or state[run["name"]] != "done":
      continue
    res = runner.read_json(os.path.join(study_dir, run["workdir"], "results.json"))
    if not res:
      continue
    m = run["meta"]
    cell = (
      raw.setdefault(m["set"], {})
      .setdefault(m["protocol"], {})
      .setdefault(m["arm"], {})
      .setdefault(m["fraction"], {"accuracy": [], "one_minus_ned": []})
    )
    for k in cell:
      cell[k].append(float(res["average"][k]))
  return {
    s: {
      p: {
        a: {f: {k: spread(v) for k, v in c.items()} for f, c in fr.items()}
        for a, fr in arms.items()
      }
      for p, arms in ps.items()
    }
    for s, ps in raw.items()
  }


def _cell(s: dict | None) -> str:
  if not s:
    return "–"
  if s["n"] == 1:
    return f"{s['mean']:.2f}"
  return f"{s['mean']:.2f} ± {s['std']:.2f} ({s['min']:.2f}–{s['max']:.2f})"


def _baseline(study, arm_name: str, protocol: str, table: dict, full: dict) -> tuple:
  """(scratch arm name, its results, protocol) for `arm_name`: same encoder kind; the same
  protocol if the baseline ran in it, else full fine-tuning."""
  enc = {a["name"]: a for a in study.arms}[arm_name]["encoder"]
  for a in study.arms:
    if not a["config"] and a["encoder"] == enc and a["name"] != arm_name:
      if a["name"] in table:
        return a["name"], table[a["name"]], protocol
      if a["name"] in full:
        return a["name"], full[a["name"]], "full"
  return None, None, None


def results_tables(study, results: dict) -> list[str]:
  """Per test set and protocol: arm x fraction (accuracy, 1-NED), then differences vs scratch."""
  lines = []
  fractions = list(study.fractions)
  arms = [a["name"] for a in study.arms]
  for set_name, per_proto in results.items():
    for proto in [p["name"] for p in study.protocols]:
      table = per_proto.get(proto, {})
      if not table:
        continue
      lines += [f"### {set_name}, protocol `{proto}`", ""]
      head = ["arm"] + [
        f"{m} f={plan.fraction_tag(f)}" for f in fractions for m in ("acc %", "1-NED %")
      ]
      lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
      for arm in arms:
        if arm in table:
          cells = [
            _cell(table[arm].get(f, {}).get(m))
            for f in fractions
            for m in ("accuracy", "one_minus_ned")
          ]
          lines.append(f"| {arm} | " + " | ".join(cells) + " |")
      lines += (
        [""] + _diff_lines(study, arms, fractions, proto, table, per_proto.get("full", {})) + [""]
      )
  return lines


def _diff_lines(study, arms, fractions, proto, table, full) -> list[str]:
  """Mean differences (percentage points) of each pretrained arm vs scratch, per fraction."""
  rows = []
  for arm in arms:
    if arm not in table or not {a["name"]: a for a in study.arms}[arm]["config"]:
      continue
    base, bres, bproto = _baseline(study, arm, proto, table, full)
    if base is None:
      continue
    cells = []
    for f in fractions:
      a, b = table[arm].get(f), bres.get(f)
      cells.append(
        "–"
        if not (a and b)
        else " / ".join(
          f"{a[m]['mean'] - b[m]['mean']:+.2f}" for m in ("accuracy", "one_minus_ned")
        )
      )
    rows.append(f"| {arm} | {base} ({bproto}) | " + " | ".join(cells) + " |")
  if not rows:
    return []
  head = ["arm", "vs"] + [f"f={plan.fraction_tag(f)}: Δacc / Δ1-NED" for f in fractions]
  return [
    "Difference of the seed means, arm minus scratch (same encoder kind), in percentage points:",
    "",
    "| " + " | ".join(head) + " |",
    "|" + "---|" * len(head),
  ] + rows


def _plt():
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  return plt


def plot_fractions(study, results: dict, plots_dir: str) -> list[str]:
  """accuracy_vs_fraction_<set>_<protocol>.png: accuracy and 1-NED vs fraction, one line per
  arm, error bars = std over seeds."""
  plt, paths = _plt(), []
  for set_name, per_proto in results.items():
    for proto, table in per_proto.items():
      fig, axes = plt.subplots(1, 2, figsize=(11, 4))
      for ax, (m, label) in zip(
        axes, (("accuracy", "word accuracy %"), ("one_minus_ned", "1-NED %"))
      ):
        for arm in [a["name"] for a in study.arms if a["name"] in table]:
          fs = sorted(table[arm])
          ax.errorbar(
            fs,
            [table[arm][f][m]["mean"] for f in fs],
            yerr=[table[arm][f][m]["std"] for f in fs],
            marker="o",
            capsize=3,
            label=arm,
            linestyle="--" if arm.startswith("scratch") else "-",
          )
        if len(study.fractions) > 1 and min(study.fractions) > 0:
          ax.set_xscale("log")
        ax.set_xticks(list(study.fractions), [f"{f * 100:g}%" for f in study.fractions])
        ax.minorticks_off()
        ax.set_xlabel("labeled fraction")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
      axes[1].legend(fontsize=7)
      fig.suptitle(f"{set_name}, protocol {proto}")
      paths.append(_save(fig, plots_dir, f"accuracy_vs_fraction_{set_name}_{proto}.png"))
      plt.close(fig)
  return paths


def plot_pretrain_losses(runs: list[dict], study_dir: str, plots_dir: str) -> str | None:
  """pretrain_losses.png: every *loss column of each pretraining run's metrics.jsonl."""
  pre = [
    (r, paths.read_metrics(os.path.join(study_dir, r["workdir"])))
    for r in runs
    if r["kind"] == "pretrain"
  ]
  pre = [(r, rows) for r, rows in pre if rows]
  if not pre:
    return None
  plt = _plt()
  cols = min(3, len(pre))
  nrows = -(-len(pre) // cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.2 * nrows), squeeze=False)
  for ax, (run, rows) in zip(axes.flat, pre):
    keys = sorted({k for r in rows for k in r if k.endswith("loss")})
    for k in keys:
      pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))]
      ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k)
    ax.set_title(run["name"].split("/", 1)[1], fontsize=9)
    ax.set_xlabel("step")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(pre) :]:
    ax.axis("off")
  path = _save(fig, plots_dir, "pretrain_losses.png")
  plt.close(fig)
  return path


def _save(fig, plots_dir: str, name: str) -> str:
  os.makedirs(plots_dir, exist_ok=True)
  path = os.path.join(plots_dir, name)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  return path


def copy_reconstructions(runs: list[dict], study_dir: str, plots_dir: str) -> list[str]:
  """The latest grid of each kind from the DiG / SimAN pretraining workdirs (samples/*.png)."""
  out = []
  for run in runs:
    if run["kind"] != "pretrain":
      continue
    workdir = os.path.join(study_dir, run["workdir"])
    method = (runner.read_json(os.path.join(workdir, "config.json")) or {}).get("method")
    if method not in ("dig", "siman"):
      continue
    latest = {}
    for png in sorted(glob.glob(os.path.join(workdir, "samples", "*.png"))):
      latest[re.sub(r"_\d+\.png$", "", os.path.basename(png))] = png
    for kind, png in sorted(latest.items()):
      dest = os.path.join(plots_dir, f"{run['name'].split('/', 1)[1]}_{os.path.basename(png)}")
      os.makedirs(plots_dir, exist_ok=True)
      shutil.copyfile(png, dest)
      out.append(dest)
  return out


def _steps_batch(workdir: str) -> str:
  c = runner.read_json(os.path.join(workdir, "config.json")) or {}
  return f"{c.get('total_steps', '?')} x {c.get('batch_size', '?')}" if c else "–"


def _encoder_text(workdir: str) -> str:
  m = (runner.read_json(os.path.join(workdir, "config.json")) or {}).get("model")
  if not m:
    return "–"
  if m["name"] == "vit":
    return f"ViT {m['embed_dim']}x{m['depth']} ({m['num_heads']} heads)"
  return (
    f"ResNet {m['channels']} {tuple(m['blocks'])} + BiLSTM {m['lstm_hidden']}x"
    f"{m['lstm_layers']}{' + TPS' if m.get('tps') else ''}"
  )


def _fmt_s(s) -> str:
  if not s:
    return "–"
  return f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def what_was_run(study, runs, study_dir, manifest, spec: str) -> list[str]:
  """Header, machine, sizes, seeds, wall times, and every command."""
  m, entries, state = (
    manifest.data["machine"],
    manifest.data["runs"],
    runner.states(runs, study_dir),
  )
  total = sum(entries.get(r["name"], {}).get("wall_s", 0) for r in runs)
  test = manifest.data.get("test_set", {})
  lines = [
    "## What was run",
    "",
    f"- study config: `{spec}`; study folder `{study_dir}`; report written {runner.now()}",
    f"- machine: {m['platform']}, {m['cpu']}, {m['cpu_count']} logical CPUs (load average "
    f"{m['load_avg_at_start'][0]:.1f} when this report's invocation started), Python "
    f"{m['python']}, jax {m.get('jax', '?')}, flax {m.get('flax', '?')}",
    f"- labeled fractions {list(study.fractions)}, fine-tuning seeds {list(study.seeds)}, "
    f"pretraining seeds {list(study.pretrain_seeds)}, protocols "
    + ", ".join(f"`{p['name']}` ({' '.join(p['overrides'])})" for p in study.protocols),
    f"- test set `{study.test.name}`: {test.get('samples', study.test.num_samples)} synthetic "
    f"lines in `{study.test.font_split}` fonts, renderer seed {study.test.seed} (validation "
    f"uses seed {', '.join(map(str, plan.val_seeds(study)))}), in "
    f"`{os.path.join(study_dir, 'data', study.test.name)}`"
    + (f"; extra LMDB roots: {list(study.lmdb_roots)}" if study.lmdb_roots else ""),
    "- fine-tuning recipe: "
    + "; ".join(
      f"{k}: `{v['config']}` {' '.join('--config.' + o for o in v['overrides'])}".strip()
      for k, v in sorted(study.finetune.items())
    ),
    f"- total wall time of the runs: {_fmt_s(total)}",
    "",
    "| run | status | encoder | steps x batch | wall time |",
    "|---|---|---|---|---|",
  ]
  for r in runs:
    if r["kind"] == "evaluate":
      continue
    e = entries.get(r["name"], {})
    wd = os.path.join(study_dir, r["workdir"])
    lines.append(
      f"| {r['name']} | {state[r['name']]} | {_encoder_text(wd)} | "
      f"{_steps_batch(wd)} | {_fmt_s(e.get('wall_s'))} |"
    )
  lines += (
    ["", "<details><summary>every command (from the repository root)</summary>", "", "```"]
    + [plan.shown(r, study_dir) for r in runs]
    + ["```", "", "</details>", ""]
  )
  return lines


def _keep_reading(path: str) -> str:
  """The text a person wrote in the Reading section of an earlier report, if any."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return READING_PLACEHOLDER
  m = re.search(re.escape(READING_START) + r"\n(.*?)\n" + re.escape(READING_END), text, re.S)
  return m.group(1).strip() if m and m.group(1).strip() else READING_PLACEHOLDER


def write_report(study, runs, study_dir, manifest, results_path, plots_dir, spec) -> dict:
  """Writes the Markdown report and its plots; returns the collected results."""
  results = collect(runs, study_dir)
  rel = lambda p: os.path.relpath(p, os.path.dirname(os.path.abspath(results_path)))
  plots = plot_fractions(study, results, plots_dir)
  loss_plot = plot_pretrain_losses(runs, study_dir, plots_dir)
  grids = copy_reconstructions(runs, study_dir, plots_dir)
  lines = [
    "# Pretraining study: results",
    "",
    "Written by `python -m sslocr_jax.study` (do not edit by hand, except the Reading section). "
    "To reproduce or extend (finished runs are skipped, interrupted ones resumed):",
    "",
    f"    python -m sslocr_jax.study --config={spec} --study_dir={study_dir}",
    "",
    "Word accuracy and 1-NED are percentages on the test sets (configs/evaluate.py: "
    "lowercase, [0-9a-z]); each cell is the mean over fine-tuning seeds ± the sample "
    "standard deviation (min–max); one seed: the value. `–`: not run (yet).",
    "",
  ]
  lines += what_was_run(study, runs, study_dir, manifest, spec)
  lines += ["## Results", ""] + (
    results_tables(study, results) or ["No evaluation has finished yet.", ""]
  )
  lines += ["## Plots", ""] + [f"![{os.path.basename(p)}]({rel(p)})" for p in plots]
  if loss_plot:
    lines += [
      "",
      "Pretraining losses (metrics.jsonl):",
      "",
      f"![pretraining losses]({rel(loss_plot)})",
    ]
  if grids:
    lines += ["", "Reconstructions (the latest grid of each DiG / SimAN pretraining):", ""]
    lines += [f"![{os.path.basename(g)}]({rel(g)})" for g in grids]
  lines += ["", "## Reading", "", READING_START, _keep_reading(results_path), READING_END, ""]
  os.makedirs(os.path.dirname(os.path.abspath(results_path)), exist_ok=True)
  # The report is committed: paths under the working folder (the repository root) are written
  # relative to it, even when --study_dir was given as an absolute path.
  text = "\n".join(lines).replace(os.path.join(os.getcwd(), ""), "")
  with open(results_path, "w") as f:
    f.write(text)
  with open(os.path.join(study_dir, "summary.json"), "w") as f:
    json.dump(
      {
        s: {
          p: {a: {plan.fraction_tag(fr): c for fr, c in fs.items()} for a, fs in t.items()}
          for p, t in ps.items()
        }
        for s, ps in results.items()
      },
      f,
      indent=1,
    )
  return results
