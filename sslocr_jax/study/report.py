"""The study's report, docs/results.md, regenerated from the committed cell results only.

    docs/results/<part>/<cell>.json             one per finished cell (runner.cell_record)
    docs/results/<part>/pretrain/<arm>-s0.json  one per pretraining (runner.pretrain_record)

No run folder is read: a report written on another machine, a day later, from the committed
files alone is the same report. Its "Reading" section (between READING_START and READING_END)
is written by a person and kept as it is.
"""

import glob
import json
import os
import re

from sslocr_jax.study import plan
from sslocr_jax.study import stats

READING_START, READING_END = "<!-- reading:start -->", "<!-- reading:end -->"
READING_PLACEHOLDER = (
  "_To be written by a person after reading the tables and plots. The driver states no "
  "conclusions beyond the arithmetic of the intervals._"
)
METRIC = "accuracy"  # the claims are on word accuracy (percentage points)


def shown_path(path: str, report_path: str) -> str:
  """`path` relative to the repository when inside it, else to the report's folder: a
  committed report never holds a machine's absolute path."""
  path = os.path.abspath(path)
  if path.startswith(os.path.join(plan.ROOT, "")):
    return os.path.relpath(path, plan.ROOT)
  return os.path.relpath(path, os.path.dirname(os.path.abspath(report_path)))


def load_results(results_dir: str) -> tuple[dict, list[dict]]:
  """({cell name: record}, [pretraining records]) from the committed files."""
  cells, pretrains = {}, []
  for path in sorted(glob.glob(os.path.join(results_dir, "*", "*.json"))):
    with open(path) as f:
      rec = json.load(f)
    cells[rec["name"]] = rec
  for path in sorted(glob.glob(os.path.join(results_dir, "*", "pretrain", "*.json"))):
    with open(path) as f:
      pretrains.append(json.load(f))
  return cells, pretrains


def current(study, cells: dict) -> dict:
  """The committed cells whose hash is that of the study's current configs (others are left
  from an older recipe: shown as stale, never compared)."""
  runs = plan.make_plan(study)
  hashes = {c["name"]: plan.cell_hash(study, c, runs) for c in plan.cells(study)}
  return {n: r for n, r in cells.items() if hashes.get(n) == r.get("hash")}


def seed_scores(cells: dict, arm: str, protocol: str, fraction: float, set_name="test") -> dict:
  """{seed: word accuracy %} of one (arm, protocol, fraction) on a test set."""
  g = plan.group_name(arm, protocol, fraction)
  return {
    r["seed"]: r["scores"][set_name][METRIC]
    for r in cells.values()
    if plan.group_name(r["arm"], r["protocol"], r["fraction"]) == g and set_name in r["scores"]
  }


def compare(study, claim: dict, cells: dict) -> list[dict]:
  """Each comparison of `claim` with its paired interval and verdict."""
  out = []
  for c in claim["comparisons"]:
    rel, f, g = c.get("relation", ">"), c["fraction"], c.get("vs_fraction")
    a = seed_scores(cells, c["arm"], c["protocol"], f)
    b = seed_scores(cells, c["baseline"], c["protocol"], f)
    text = f"{c['arm']} {rel} {c['baseline']} (`{c['protocol']}`, f={plan.fraction_tag(f)})"
    if g is not None:  # the gap at f against the gap at g, seed by seed
      a2 = seed_scores(cells, c["arm"], c["protocol"], g)
      b2 = seed_scores(cells, c["baseline"], c["protocol"], g)
      a = {s: a[s] - b[s] for s in set(a) & set(b)}
      b = {s: a2[s] - b2[s] for s in set(a2) & set(b2)}
      text = (
        f"gap {c['arm']} − {c['baseline']} (`{c['protocol']}`): f={plan.fraction_tag(f)} "
        f"{rel} f={plan.fraction_tag(g)}"
      )
    interval = stats.paired_interval(a, b)
    out.append(
      dict(
        comparison=c,
        text=text,
        arm=stats.spread(a.values()) if a else None,
        baseline=stats.spread(b.values()) if b else None,
        interval=interval,
        verdict=stats.verdict(interval, rel, study.get("margin", 0.0)),
      )
    )
  return out


def _ms(s: dict | None) -> str:
  if not s:
    return "–"
  return f"{s['mean']:.2f}" if s["n"] == 1 else f"{s['mean']:.2f} ± {s['std']:.2f} (n={s['n']})"


def _iv(iv: dict | None) -> str:
  if not iv:
    return "– (needs 2+ paired seeds)"
  return f"{iv['mean']:+.2f} [{iv['lo']:+.2f}, {iv['hi']:+.2f}] (n={iv['n']})"


def claim_lines(study, cells: dict) -> tuple[list[str], dict]:
  """The claims section and {claim: verdict}."""
  lines, verdicts = ["## Claims", ""], {}
  for claim in study.claims:
    rows = compare(study, claim, cells)
    verdicts[claim["name"]] = stats.claim_verdict([r["verdict"] for r in rows])
    lines += [
      f"### `{claim['name']}`: **{verdicts[claim['name']]}**",
      "",
      claim["title"] + ".",
      "",
      "| comparison | arm acc % | baseline acc % | paired Δ, 95% interval | verdict |",
      "|---|---|---|---|---|",
    ]
    lines += [
      f"| {r['text']} | {_ms(r['arm'])} | {_ms(r['baseline'])} | {_iv(r['interval'])} | "
      f"{r['verdict']} |"
      for r in rows
    ]
    lines.append("")
  return lines, verdicts


def part_lines(study, cells: dict, all_cells: dict, rel: str) -> list[str]:
  """Per part: its command, estimated and measured minutes, cells committed."""
  lines = [
    "## Parts",
    "",
    "Each part runs in one sitting (`--dry_run` estimates at the step caps on a 2-core CPU; "
    "measured: the sum of its committed wall times, each pretraining once):",
    "",
    "| part | claim | cells committed | estimated | measured | command |",
    "|---|---|---|---|---|---|",
  ]
  for part in study.parts:
    mine = [c["name"] for c in plan.cells(study, [part["name"]])]
    done = [cells[n] for n in mine if n in cells]
    stale = sum(1 for n in mine if n in all_cells and n not in cells)
    pre = {r["arm"]: r["wall_s"]["pretrain"] or 0 for r in done}
    wall = sum(pre.values()) + sum(
      (r["wall_s"]["finetune"] or 0) + (r["wall_s"]["evaluate"] or 0) for r in done
    )
    est = plan.part_minutes(study, part["name"])
    cmd = (
      f"`python -m sslocr_jax.study --config=configs/study.py:{study.variant} "
      f"--part={part['name']}`"
    ).replace(":default", "")
    lines.append(
      f"| {part['name']} | {part['claim']} | {len(done)}/{len(mine)}"
      + (f" ({stale} stale)" if stale else "")
      + f" | {f'{est:.0f} min' if est else '–'} | {f'{wall / 60:.0f} min' if done else '–'} | "
      f"{cmd} |"
    )
  lines += ["", f"Cell results: `{rel}/<part>/<cell>.json`.", ""]
  return lines


def cell_lines(study, cells: dict) -> list[str]:
  """Per part, per (arm, protocol, fraction): test scores over seeds and how the runs ended."""
  lines = ["## Cells", ""]
  for part in study.parts:
    rows = []
    for arm, proto, f in part["cells"]:
      g = plan.group_name(arm, proto, f)
      recs = [
        r for r in cells.values() if plan.group_name(r["arm"], r["protocol"], r["fraction"]) == g
      ]
      if not recs:
        continue
      recs.sort(key=lambda r: r["seed"])
      acc = stats.spread(r["scores"]["test"]["accuracy"] for r in recs)
      ned = stats.spread(r["scores"]["test"]["one_minus_ned"] for r in recs)
      ends = ", ".join(
        f"{r['finetune']['stopped_at']}{'*' if r['finetune']['early_stopped'] else ''}"
        f"/{r['finetune']['best_step']}"
        for r in recs
      )
      ft_min = sum(r["wall_s"]["finetune"] or 0 for r in recs) / 60 / len(recs)
      rows.append(
        f"| {g} | {', '.join(str(r['seed']) for r in recs)} | {_ms(acc)} | {_ms(ned)} | "
        f"{ends} | {ft_min:.1f} min |"
      )
    if rows:
      lines += [
        f"### part `{part['name']}`",
        "",
        "| cell | seeds | test acc % | test 1-NED % | stopped / best step (* early) | "
        "fine-tuning, mean |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
      ]
  if len(lines) == 2:
    lines += ["No cell has been committed yet.", ""]
  return lines


def plot_pretraining(pretrains: list[dict], path: str) -> str | None:
  """Loss and probe curves of the committed pretrainings, one panel per metric kind."""
  if not pretrains:
    return None
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  kinds = ["loss"] + (
    ["probe_accuracy"] if any("probe_accuracy" in p["curves"] for p in pretrains) else []
  )
  fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 3.6), squeeze=False)
  for ax, kind in zip(axes[0], kinds):
    for p in pretrains:
      pts = p["curves"].get(kind)
      if pts:
        ax.plot([s for s, _ in pts], [v for _, v in pts], label=p["arm"])
    ax.set_xlabel("pretraining step")
    ax.set_ylabel(kind)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path


def _keep_reading(path: str) -> str:
  """The text a person wrote in the Reading section of the existing report, if any."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return READING_PLACEHOLDER
  m = re.search(re.escape(READING_START) + r"\n(.*?)\n" + re.escape(READING_END), text, re.S)
  return m.group(1).strip() if m and m.group(1).strip() else READING_PLACEHOLDER


def write_report(study, results_dir: str, report_path: str, plot: bool = True) -> dict:
  """Regenerates `report_path` from the committed results; returns {claim: verdict}."""
  all_cells, pretrains = load_results(results_dir)
  cells = current(study, all_cells)
  here = os.path.dirname(os.path.abspath(report_path))
  claims, verdicts = claim_lines(study, cells)
  spec = f"configs/study.py:{study.variant}".replace(":default", "")
  lines = [
    "# Pretraining study: results",
    "",
    "Regenerated by `python -m sslocr_jax.study` from the committed results under "
    f"`{shown_path(results_dir, report_path)}/` (edit only the Reading section). How to run "
    "each part and what it measures: `docs/study.md`.",
    "",
    f"Study config `{spec}`; fine-tuning seeds {list(study.seeds)}; word accuracy in % on "
    f"`{study.test.name}` ({study.test.num_samples} lines in held-out fonts, renderer seed "
    f"{study.test.seed}), each fine-tuning's best validation checkpoint (early stopping). "
    "A comparison pairs the same fine-tuning seeds; its 95% interval is Student's paired t; "
    f"`>`: reproduced when the interval is above 0, refuted when below; `>=`: above / below "
    f"−{study.get('margin', 0.0):g} points. A claim is reproduced when all its comparisons "
    "are, refuted when one is. In a gap row the two score columns are the arm − baseline "
    "differences at the two fractions.",
    "",
  ]
  lines += claims
  lines += part_lines(study, cells, all_cells, shown_path(results_dir, report_path))
  lines += cell_lines(study, cells)
  fig = plot_pretraining(pretrains, os.path.join(results_dir, "pretraining.png")) if plot else None
  if fig:
    lines += [
      "## Pretraining curves",
      "",
      f"![pretraining curves]({os.path.relpath(fig, here)})",
      "",
    ]
  lines += ["## Reading", "", READING_START, _keep_reading(report_path), READING_END, ""]
  os.makedirs(here, exist_ok=True)
  with open(report_path, "w") as f:
    f.write("\n".join(lines))
  return verdicts
