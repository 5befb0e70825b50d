r"""The pretraining study driver: pretrain, fine-tune, evaluate, write docs/results.md.

    python benchmarks/study.py --config=configs/study.py:cpu --study_dir=runs/study \
        [--only=REGEX] [--dry_run] [--results=docs/results.md] [--plots_dir=docs/results]

Every run is a subprocess `python -m sslocr_jax.main ...` in its own workdir under study_dir:

    STUDY_DIR/data/<test name>/                      the held-out test LMDB (written once)
    STUDY_DIR/pretrain/<arm>-s<seed>/                pretraining
    STUDY_DIR/finetune/<arm>-f<fraction>-<protocol>-s<seed>/
    STUDY_DIR/eval/<finetune name>/<set>/results.json   configs/evaluate.py on each test set
    STUDY_DIR/manifest.json                          commands, status, wall time of every run

A run is finished when the driver wrote `study_done.json` into its workdir after exit code 0
(or, for training, when metrics.jsonl and checkpoints/ reached config.total_steps). Finished
runs are skipped; interrupted ones are resumed by rerunning the same command. A finished run
whose recorded command differs from the current one, or that used a run redone since (e.g. a
fine-tuning whose pretraining was redone), is `stale`: it blocks the runs that need it until
its workdir is deleted, or `--redo_stale` deletes and reruns it (e.g. after a change of the
fine-tuning recipe in the study config). `--only` selects runs by name (re.search) and pulls
in the unfinished runs they need. Before anything runs, the study is checked: each arm's
pretraining encoder must be the one its fine-tuning config builds, and the test set's seed
must differ from the validation seed of every fine-tuning config. The report (tables, plots,
reconstruction grids) is rewritten from whatever has finished; the text of its "Reading"
section, written by a person, is kept.
"""

import datetime
import glob
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags

from sslocr_jax import config_utils
from sslocr_jax import paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DONE = "study_done.json"
READING_START, READING_END = "<!-- reading:start -->", "<!-- reading:end -->"
READING_PLACEHOLDER = ("_To be written by a person after reading the tables and plots. The "
                       "driver states no conclusions; the comparisons above are arithmetic "
                       "only._")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Study config (configs/study.py:V).",
                                          lock_config=True)
_STUDY_DIR = flags.DEFINE_string("study_dir", None, "Folder of every run of the study.")
_ONLY = flags.DEFINE_string("only", "", "Run only runs whose name matches (re.search), with "
                            "the unfinished runs they need.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the plan and the commands; run nothing.")
_REDO_STALE = flags.DEFINE_bool("redo_stale", False, "Delete the workdir of each stale run "
                                "and run it again.")
_RESULTS = flags.DEFINE_string("results", os.path.join(ROOT, "docs", "results.md"),
                               "The report (Markdown).")
_PLOTS_DIR = flags.DEFINE_string("plots_dir", None, "Plots and grids (default: the report's "
                                 "path without .md, e.g. docs/results/).")


# --- configs -----------------------------------------------------------------------------


def _parse_like(old, text: str):
  """`text` as the type of the field's current value (as config_flags does)."""
  if isinstance(old, bool):
    return text.lower() in ("1", "true", "yes")
  if isinstance(old, (int, float)) and not isinstance(old, bool):
    return type(old)(float(text)) if isinstance(old, int) and "." in text else type(old)(text)
  if isinstance(old, (list, tuple)):
    import ast  # pylint: disable=g-import-not-at-top
    return type(old)(ast.literal_eval(text))
  return text


def resolve(spec: str, overrides) -> dict:
  """The config of `spec` with "field=value" overrides applied, as a plain dict."""
  c = config_utils.load_config(spec)
  c.unlock()
  for item in overrides:
    key, _, text = item.partition("=")
    *parents, leaf = key.split(".")
    node = c
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise ValueError(f"{spec}: override {item!r} names no field")
    node[leaf] = _parse_like(node[leaf], text)
  return c.to_dict()


def encoder_signature(config: dict, kind: str) -> dict:
  """The fields that decide the encoder's parameter shapes (and the ViT's input size)."""
  model = config["model"]
  if model["name"] != kind:
    return {"name": model["name"]}
  sig = {k: (list(model[k]) if isinstance(model[k], (list, tuple)) else model[k])
         for k in config_utils.ENCODER_KEYS[kind]}
  if kind == "vit":
    sig.update(image_height=config["image_height"], image_width=config["image_width"])
  return sig


def val_seeds(study) -> list[int]:
  """The validation renderer seeds of the fine-tuning configs (synthetic val_data)."""
  return sorted({int(resolve(ft["config"], ft["overrides"])["val_data"]["seed"])
                 for ft in study.finetune.values()})


def check_study(study) -> list[str]:
  """Problems that would make the study wrong: an arm whose pretraining encoder differs from
  the one its fine-tuning builds, a test set rendered with a validation seed."""
  problems = []
  names = [a["name"] for a in study.arms]
  protocols = [p["name"] for p in study.protocols]
  if len(set(names)) < len(names):
    problems.append(f"arm names repeat: {names}")
  for arm in study.arms:
    if arm["encoder"] not in study.finetune:
      problems.append(f"arm {arm['name']}: encoder {arm['encoder']!r} has no fine-tuning "
                      f"recipe; valid: {sorted(study.finetune)}")
    unknown = set(arm.get("protocols") or ()) - set(protocols)
    if unknown:
      problems.append(f"arm {arm['name']}: unknown protocols {sorted(unknown)}")
  for kind, ft in study.finetune.items():
    for p in study.protocols:  # an unknown field fails here, before any run
      resolve(ft["config"], list(ft["overrides"]) + list(p["overrides"]))
  if problems:
    return problems
  if int(study.test.seed) in val_seeds(study):
    problems.append(f"test.seed={study.test.seed} is a validation seed: the test set would "
                    "repeat the validation lines")
  for arm in study.arms:
    if not arm["config"]:
      continue
    ft = study.finetune[arm["encoder"]]
    want = encoder_signature(resolve(ft["config"], ft["overrides"]), arm["encoder"])
    got = encoder_signature(resolve(arm["config"], arm["overrides"]), arm["encoder"])
    diff = {k: (got.get(k), want.get(k)) for k in set(got) | set(want) if got.get(k) != want.get(k)}
    if diff:
      problems.append(f"arm {arm['name']}: pretraining vs fine-tuning encoder differ "
                      f"(field: pretrain, finetune): {diff}")
  return problems


# --- the plan ----------------------------------------------------------------------------


def fraction_tag(f: float) -> str:
  return f"{f:g}"


def _main_cmd(config: str, workdir: str, overrides) -> list[str]:
  return (["-m", "sslocr_jax.main", f"--config={config}", f"--workdir={workdir}"] +
          [f"--config.{o}" for o in overrides])


def make_plan(study, study_dir: str) -> list[dict]:
  """Every run in execution order: pretrainings, then each fine-tuning and its evaluations.

  A run: name, kind (pretrain | finetune | evaluate), workdir (relative to study_dir), args
  (after `python`, with study_dir-relative paths written as {study}/...), deps, meta.
  """
  runs = []
  pre_seeds = list(study.pretrain_seeds)
  for arm in study.arms:
    if not arm["config"]:
      continue
    for s in pre_seeds:
      name = f"pretrain/{arm['name']}-s{s}"
      runs.append(dict(name=name, kind="pretrain", workdir=name, deps=[],
                       args=_main_cmd(arm["config"], "{study}/" + name,
                                      [f"seed={s}"] + list(arm["overrides"])),
                       meta=dict(arm=arm["name"], seed=s, encoder=arm["encoder"])))
  eval_sets = [("test", "{study}/data/" + study.test.name)]
  for root in study.lmdb_roots:
    name = base = os.path.basename(os.path.normpath(root)) or "lmdb"
    while name in [n for n, _ in eval_sets]:  # two roots named alike: lmdb, lmdb_2, ...
      name = f"{base}_{len(eval_sets) + 1}"
    eval_sets.append((name, os.path.abspath(root)))
  protocols = {p["name"]: p for p in study.protocols}
  for arm in study.arms:
    ft = study.finetune[arm["encoder"]]
    for proto in arm.get("protocols") or list(protocols):
      for f in study.fractions:
        for s in study.seeds:
          runs += _finetune_runs(arm, ft, protocols[proto], f, s, pre_seeds, eval_sets, study)
  return runs


def _finetune_runs(arm, ft, proto, f, s, pre_seeds, eval_sets, study) -> list[dict]:
  """One fine-tuning run and one evaluation per test set."""
  name = f"finetune/{arm['name']}-f{fraction_tag(f)}-{proto['name']}-s{s}"
  overrides = [f"seed={s}", f"data.fraction={f}"]
  deps = []
  if arm["config"]:
    pre = f"pretrain/{arm['name']}-s{s if s in pre_seeds else pre_seeds[0]}"
    overrides.append("init_from={study}/" + pre)
    deps.append(pre)
  overrides += list(ft["overrides"]) + list(proto["overrides"])
  meta = dict(arm=arm["name"], fraction=f, protocol=proto["name"], seed=s,
              encoder=arm["encoder"], pretrain=deps[0] if deps else "")
  runs = [dict(name=name, kind="finetune", workdir=name, deps=deps, meta=meta,
               args=_main_cmd(ft["config"], "{study}/" + name, overrides))]
  for set_name, root in eval_sets:
    ev = f"eval/{name[len('finetune/'):]}/{set_name}"
    ev_overrides = [f"checkpoint={{study}}/{name}", f"data.lmdb_root={root}"]
    runs.append(dict(name=ev, kind="evaluate", workdir=ev, deps=[name],
                     meta=dict(meta, set=set_name, finetune=name),
                     args=_main_cmd(study.evaluate["config"], "{study}/" + ev,
                                    ev_overrides + list(study.evaluate["overrides"]))))
  return runs


def select(runs: list[dict], only: str, finished) -> list[dict]:
  """The runs matching `only`, plus the unfinished runs they depend on (in plan order)."""
  if not only:
    return runs
  by_name = {r["name"]: r for r in runs}
  keep = {r["name"] for r in runs if re.search(only, r["name"])}
  todo = list(keep)
  while todo:
    for dep in by_name[todo.pop()]["deps"]:
      if dep not in keep and not finished(by_name[dep]):
        keep.add(dep)
        todo.append(dep)
  return [r for r in runs if r["name"] in keep]


def expand(args: list[str], study_dir: str) -> list[str]:
  return [a.replace("{study}", study_dir) for a in args]


def shown(run: dict, study_dir: str) -> str:
  """The command as a person would type it (from the repository root)."""
  return "python " + shlex.join(expand(run["args"], study_dir))


# --- state of a run ----------------------------------------------------------------------


def _json(path: str, default=None):
  try:
    with open(path) as f:
      return json.load(f)
  except (FileNotFoundError, json.JSONDecodeError):
    return default


def trained_to_end(workdir: str) -> bool:
  """metrics.jsonl and checkpoints/ both reached config.total_steps (written by the loop)."""
  config = _json(os.path.join(workdir, "config.json"))
  if not config:
    return False
  total = int(config["total_steps"])
  steps = [r.get("step", -1) for r in paths.read_metrics(workdir)]
  return bool(steps) and max(steps) >= total and os.path.isdir(
      os.path.join(workdir, "checkpoints", str(total)))


def _finished_at(study_dir: str, name: str) -> str | None:
  return (_json(os.path.join(study_dir, name, DONE)) or {}).get("finished")


def run_state(run: dict, study_dir: str) -> str:
  """done | stale (finished with another command, or from a run it needs that was redone
  since) | pending."""
  workdir = os.path.join(study_dir, run["workdir"])
  done = _json(os.path.join(workdir, DONE))
  if done is not None:
    deps = done.get("deps", {})
    same_deps = all(_finished_at(study_dir, d) == t for d, t in deps.items())
    return "done" if done.get("args") == run["args"] and same_deps else "stale"
  if run["kind"] != "evaluate" and trained_to_end(workdir):
    return "done"
  return "pending"


def states(runs: list[dict], study_dir: str) -> dict:
  """run_state of each run (in plan order), `stale` too where a run it needs is not done."""
  out = {}
  for r in runs:
    s = run_state(r, study_dir)
    if s == "done" and any(out.get(d, "done") != "done" for d in r["deps"]):
      s = "stale"
    out[r["name"]] = s
  return out


# --- executing -------------------------------------------------------------------------


class Manifest:
  """STUDY_DIR/manifest.json: the machine, each invocation, and every run's history."""

  def __init__(self, study_dir: str, study):
    self.path = os.path.join(study_dir, "manifest.json")
    self.data = _json(self.path, {}) or {}
    self.data.update(study=study.to_dict(), study_dir=study_dir, machine=machine())
    self.data.setdefault("runs", {})
    self.data.setdefault("invocations", [])
    self.invocation = dict(start=_now(), argv=sys.argv[1:], machine=self.data["machine"],
                           ran=[], skipped=[], failed=[], blocked=[], stale=[])
    self.data["invocations"].append(self.invocation)

  def run(self, run: dict, study_dir: str) -> dict:
    entry = self.data["runs"].setdefault(run["name"], {"attempts": [], "wall_s": 0.0})
    entry.update(kind=run["kind"], workdir=run["workdir"], meta=run["meta"],
                 command=shown(run, study_dir))
    return entry

  def note(self, name: str, what: str) -> None:
    self.invocation[what].append(name)
    self.data["runs"][name]["last"] = what

  def save(self) -> None:
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(self.data, f, indent=1)
    os.replace(tmp, self.path)


def _now() -> str:
  return datetime.datetime.now().isoformat(timespec="seconds")


def machine() -> dict:
  """What the timings were measured on (no JAX import: the runs are subprocesses)."""
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f
                  if line.startswith("model name")), cpu)
  except OSError:
    pass
  out = dict(platform=platform.platform(), cpu=cpu, cpu_count=os.cpu_count(),
             python=platform.python_version(), load_avg_at_start=list(os.getloadavg()),
             jax_platforms=os.environ.get("JAX_PLATFORMS", ""))
  for pkg in ("jax", "jaxlib", "flax"):
    try:
      out[pkg] = importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
      pass
  return out


def complete(run: dict, workdir: str) -> bool:
  """What a run leaves when it has finished (a stopped training run also exits with 0)."""
  if run["kind"] == "evaluate":
    return os.path.exists(os.path.join(workdir, "results.json"))
  return trained_to_end(workdir)


def execute(run: dict, study_dir: str, entry: dict) -> int:
  """Runs (or resumes) one run; output goes to WORKDIR/study.log. Returns the exit code, or
  -1 for an exit code 0 before the run's end (stopped by a signal sent to it alone)."""
  workdir = os.path.join(study_dir, run["workdir"])
  os.makedirs(workdir, exist_ok=True)
  cmd = [sys.executable] + expand(run["args"], os.path.abspath(study_dir))
  start, t0, load = _now(), time.time(), round(os.getloadavg()[0], 2)
  with open(os.path.join(workdir, "study.log"), "a") as log:
    log.write(f"\n=== {start} {shlex.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    def forward(signum, frame):  # SIGTERM to the driver: the run checkpoints and stops
      del frame
      proc.send_signal(signum)
      raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, forward)
    try:
      rc = proc.wait()
    except KeyboardInterrupt:  # Ctrl-C reaches the child too: let it checkpoint and exit
      rc = proc.wait()
      raise
    finally:
      signal.signal(signal.SIGTERM, old)
      wall = time.time() - t0
      entry["attempts"].append(dict(start=start, wall_s=round(wall, 2), rc=proc.returncode,
                                    load_avg_at_start=load))
      entry["wall_s"] = round(entry["wall_s"] + wall, 2)
  if rc == 0 and not complete(run, workdir):
    return -1
  if rc == 0:
    with open(os.path.join(workdir, DONE), "w") as f:
      json.dump(dict(args=run["args"], finished=_now(), wall_s=entry["wall_s"],
                   deps={d: _finished_at(study_dir, d) for d in run["deps"]}), f)
  return rc


def _tail(path: str, n: int = 15) -> str:
  try:
    with open(path) as f:
      return "".join(f.readlines()[-n:])
  except OSError:
    return ""


def run_all(runs: list[dict], study_dir: str, manifest: Manifest) -> bool:
  """Runs every unfinished run in order; a failed run blocks the runs that need it."""
  bad = set()
  for i, run in enumerate(runs, 1):
    entry = manifest.run(run, study_dir)
    state = run_state(run, study_dir)
    if state == "done" and any(d in bad for d in run["deps"]):
      state = "stale"  # finished from a run that is stale itself
    tag = f"[{i}/{len(runs)}] {run['name']}"
    if state == "done":
      entry["status"] = "done"
      manifest.note(run["name"], "skipped")
      continue
    if state == "stale" and _REDO_STALE.value and not any(d in bad for d in run["deps"]):
      print(f"{tag}: stale, deleting {run['workdir']} to redo it", flush=True)
      shutil.rmtree(os.path.join(study_dir, run["workdir"]))
      entry.update(attempts=[], wall_s=0.0)
      state = "pending"
    if state == "stale" or any(d in bad for d in run["deps"]):
      what = "stale" if state == "stale" else "blocked"
      entry["status"] = what
      manifest.note(run["name"], what)
      bad.add(run["name"])
      print(f"{tag}: {what}" + (" (finished with another command, or from a run that is stale "
                                "or was redone: delete its workdir to redo it, or pass "
                                "--redo_stale)" if what == "stale" else ""), flush=True)
      continue
    print(f"{tag}: running ({'resuming' if entry['attempts'] else 'new'})", flush=True)
    try:
      rc = execute(run, study_dir, entry)
    except KeyboardInterrupt:
      entry["status"] = "interrupted"
      raise
    finally:
      manifest.save()
    entry["status"] = "done" if rc == 0 else "failed"
    manifest.note(run["name"], "ran" if rc == 0 else "failed")
    manifest.save()
    if rc:
      bad.add(run["name"])
      log = os.path.join(study_dir, run["workdir"], "study.log")
      why = "stopped before its end; rerun to resume" if rc == -1 else f"exit {rc}"
      print(f"{tag}: FAILED ({why}); the end of {log}:\n{_tail(log)}", flush=True)
    else:
      print(f"{tag}: done in {entry['attempts'][-1]['wall_s']:.0f} s", flush=True)
  return not bad


# --- the test set ----------------------------------------------------------------------


def ensure_test_set(study, study_dir: str) -> dict:
  """Writes the held-out test LMDB once (atomically); fails if its spec has changed."""
  from sslocr_jax.data import sources  # pylint: disable=g-import-not-at-top
  spec = dict(study.test)
  path = os.path.join(study_dir, "data", spec["name"])
  spec_path = os.path.join(path, "spec.json")
  if os.path.exists(spec_path):
    old = _json(spec_path)
    if old.get("spec") != spec:
      raise SystemExit(f"error: {path} was written for {old.get('spec')}, the study now asks "
                       f"for {spec}: delete it (and the eval/ folders) to rewrite it")
    return old
  t0 = time.time()
  src = sources.SyntheticSource(spec["num_samples"], seed=spec["seed"],
                                font_split=spec["font_split"],
                                word_prob=float(spec.get("word_prob", 0.6)))
  tmp = path + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  n = sources.write_lmdb(tmp, ((r["image"], r["label"]) for r in map(src.__getitem__,
                                                                     range(len(src)))))
  info = dict(spec=spec, samples=n, wall_s=round(time.time() - t0, 2), written=_now())
  with open(os.path.join(tmp, "spec.json"), "w") as f:
    json.dump(info, f, indent=1)
  os.replace(tmp, path)
  print(f"test set: {n} lines in held-out fonts -> {path} ({info['wall_s']:.0f} s)", flush=True)
  return info


# --- results -----------------------------------------------------------------------------


def spread(values: list[float]) -> dict:
  return dict(mean=statistics.fmean(values), n=len(values), min=min(values), max=max(values),
              std=statistics.stdev(values) if len(values) > 1 else 0.0)


def collect(runs: list[dict], study_dir: str) -> dict:
  """{set: {protocol: {arm: {fraction: {"accuracy": spread, "one_minus_ned": spread}}}}}."""
  raw, state = {}, states(runs, study_dir)
  for run in runs:
    if run["kind"] != "evaluate" or state[run["name"]] != "done":
      continue
    res = _json(os.path.join(study_dir, run["workdir"], "results.json"))
    if not res:
      continue
    m = run["meta"]
    cell = raw.setdefault(m["set"], {}).setdefault(m["protocol"], {}).setdefault(
        m["arm"], {}).setdefault(m["fraction"], {"accuracy": [], "one_minus_ned": []})
    for k in cell:
      cell[k].append(float(res["average"][k]))
  return {s: {p: {a: {f: {k: spread(v) for k, v in c.items()} for f, c in fr.items()}
                  for a, fr in arms.items()} for p, arms in ps.items()} for s, ps in raw.items()}


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
      head = ["arm"] + [f"{m} f={fraction_tag(f)}" for f in fractions
                        for m in ("acc %", "1-NED %")]
      lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
      for arm in arms:
        if arm in table:
          cells = [_cell(table[arm].get(f, {}).get(m)) for f in fractions
                   for m in ("accuracy", "one_minus_ned")]
          lines.append(f"| {arm} | " + " | ".join(cells) + " |")
      lines += [""] + _diff_lines(study, arms, fractions, proto, table,
                                  per_proto.get("full", {})) + [""]
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
      cells.append("–" if not (a and b) else " / ".join(
          f"{a[m]['mean'] - b[m]['mean']:+.2f}" for m in ("accuracy", "one_minus_ned")))
    rows.append(f"| {arm} | {base} ({bproto}) | " + " | ".join(cells) + " |")
  if not rows:
    return []
  head = ["arm", "vs"] + [f"f={fraction_tag(f)}: Δacc / Δ1-NED" for f in fractions]
  return (["Difference of the seed means, arm minus scratch (same encoder kind), in "
           "percentage points:", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
          + rows)


# --- plots -------------------------------------------------------------------------------


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
      for ax, (m, label) in zip(axes, (("accuracy", "word accuracy %"),
                                       ("one_minus_ned", "1-NED %"))):
        for arm in [a["name"] for a in study.arms if a["name"] in table]:
          fs = sorted(table[arm])
          ax.errorbar(fs, [table[arm][f][m]["mean"] for f in fs],
                      yerr=[table[arm][f][m]["std"] for f in fs], marker="o", capsize=3,
                      label=arm, linestyle="--" if arm.startswith("scratch") else "-")
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
  pre = [(r, paths.read_metrics(os.path.join(study_dir, r["workdir"]))) for r in runs
         if r["kind"] == "pretrain"]
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
  for ax in list(axes.flat)[len(pre):]:
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
    method = (_json(os.path.join(workdir, "config.json")) or {}).get("method")
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


# --- the report --------------------------------------------------------------------------


def _steps_batch(workdir: str) -> str:
  c = _json(os.path.join(workdir, "config.json")) or {}
  return f"{c.get('total_steps', '?')} x {c.get('batch_size', '?')}" if c else "–"


def _encoder_text(workdir: str) -> str:
  m = (_json(os.path.join(workdir, "config.json")) or {}).get("model")
  if not m:
    return "–"
  if m["name"] == "vit":
    return f"ViT {m['embed_dim']}x{m['depth']} ({m['num_heads']} heads)"
  return (f"ResNet {m['channels']} {tuple(m['blocks'])} + BiLSTM {m['lstm_hidden']}x"
          f"{m['lstm_layers']}{' + TPS' if m.get('tps') else ''}")


def _fmt_s(s) -> str:
  if not s:
    return "–"
  return f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def what_was_run(study, runs, study_dir, manifest, spec: str) -> list[str]:
  """Header, machine, sizes, seeds, wall times, and every command."""
  m, entries, state = manifest.data["machine"], manifest.data["runs"], states(runs, study_dir)
  total = sum(entries.get(r["name"], {}).get("wall_s", 0) for r in runs)
  test = manifest.data.get("test_set", {})
  lines = [
      "## What was run", "",
      f"- study config: `{spec}`; study folder `{study_dir}`; report written {_now()}",
      f"- machine: {m['platform']}, {m['cpu']}, {m['cpu_count']} logical CPUs (load average "
      f"{m['load_avg_at_start'][0]:.1f} when this report's invocation started), Python "
      f"{m['python']}, jax {m.get('jax', '?')}, flax {m.get('flax', '?')}",
      f"- labeled fractions {list(study.fractions)}, fine-tuning seeds {list(study.seeds)}, "
      f"pretraining seeds {list(study.pretrain_seeds)}, protocols "
      + ", ".join(f"`{p['name']}` ({' '.join(p['overrides'])})" for p in study.protocols),
      f"- test set `{study.test.name}`: {test.get('samples', study.test.num_samples)} synthetic "
      f"lines in `{study.test.font_split}` fonts, renderer seed {study.test.seed} (validation "
      f"uses seed {', '.join(map(str, val_seeds(study)))}), in "
      f"`{os.path.join(study_dir, 'data', study.test.name)}`"
      + (f"; extra LMDB roots: {list(study.lmdb_roots)}" if study.lmdb_roots else ""),
      "- fine-tuning recipe: " + "; ".join(
          f"{k}: `{v['config']}` {' '.join('--config.' + o for o in v['overrides'])}".strip()
          for k, v in sorted(study.finetune.items())),
      f"- total wall time of the runs: {_fmt_s(total)}", "",
      "| run | status | encoder | steps x batch | wall time |", "|---|---|---|---|---|"]
  for r in runs:
    if r["kind"] == "evaluate":
      continue
    e = entries.get(r["name"], {})
    wd = os.path.join(study_dir, r["workdir"])
    lines.append(f"| {r['name']} | {state[r['name']]} | {_encoder_text(wd)} | "
                 f"{_steps_batch(wd)} | {_fmt_s(e.get('wall_s'))} |")
  lines += ["", "<details><summary>every command (from the repository root)</summary>", "",
            "```"] + [shown(r, study_dir) for r in runs] + ["```", "", "</details>", ""]
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
      "# Pretraining study: results", "",
      "Written by `benchmarks/study.py` (do not edit by hand, except the Reading section). "
      "To reproduce or extend (finished runs are skipped, interrupted ones resumed):", "",
      f"    python benchmarks/study.py --config={spec} --study_dir={study_dir}", "",
      "Word accuracy and 1-NED are percentages on the test sets (configs/evaluate.py: "
      "lowercase, [0-9a-z]); each cell is the mean over fine-tuning seeds ± the sample "
      "standard deviation (min–max); one seed: the value. `–`: not run (yet).", ""]
  lines += what_was_run(study, runs, study_dir, manifest, spec)
  lines += ["## Results", ""] + (results_tables(study, results) or ["No evaluation has "
                                                                     "finished yet.", ""])
  lines += ["## Plots", ""] + [f"![{os.path.basename(p)}]({rel(p)})" for p in plots]
  if loss_plot:
    lines += ["", "Pretraining losses (metrics.jsonl):", "", f"![pretraining losses]"
              f"({rel(loss_plot)})"]
  if grids:
    lines += ["", "Reconstructions (the latest grid of each DiG / SimAN pretraining):", ""]
    lines += [f"![{os.path.basename(g)}]({rel(g)})" for g in grids]
  lines += ["", "## Reading", "", READING_START, _keep_reading(results_path), READING_END, ""]
  os.makedirs(os.path.dirname(os.path.abspath(results_path)), exist_ok=True)
  with open(results_path, "w") as f:
    f.write("\n".join(lines))
  with open(os.path.join(study_dir, "summary.json"), "w") as f:
    json.dump({s: {p: {a: {fraction_tag(fr): c for fr, c in fs.items()} for a, fs in t.items()}
                   for p, t in ps.items()} for s, ps in results.items()}, f, indent=1)
  return results


# --- main --------------------------------------------------------------------------------


def train_samples(run: dict) -> int:
  """total_steps x batch_size of a training run's resolved config (0 for an evaluation)."""
  if run["kind"] == "evaluate":
    return 0
  spec = run["args"][2].split("=", 1)[1]
  c = resolve(spec, [a[len("--config."):] for a in run["args"][4:]])
  return int(c["total_steps"]) * int(c["batch_size"])


def dry_run(runs: list[dict], study_dir: str) -> None:
  """Prints each run's state and command, then counts and training samples still to do."""
  counts, todo, state_of = {}, {}, states(runs, study_dir)
  for r in runs:
    state = state_of[r["name"]]
    counts[(r["kind"], state)] = counts.get((r["kind"], state), 0) + 1
    if state != "done":
      todo[r["kind"]] = todo.get(r["kind"], 0) + train_samples(r)
    print(f"{state:8s} {r['name']}\n         {shown(r, study_dir)}")
  print("\n" + ", ".join(f"{k} {s}: {n}" for (k, s), n in sorted(counts.items())))
  print("training samples to do (steps x batch, summed): " + ", ".join(
      f"{k} {n:,}" for k, n in sorted(todo.items()) if n))


def main(argv):
  del argv
  study = _CONFIG.value
  if not _STUDY_DIR.value:
    raise app.UsageError("--study_dir is required")
  study_dir = _STUDY_DIR.value
  spec = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--config=")),
              "configs/study.py")
  try:
    problems = check_study(study)
  except ValueError as e:  # an override naming no field
    raise SystemExit(f"error: {e}") from e
  if problems:
    raise SystemExit("error: " + "\n".join(problems))
  plan = make_plan(study, study_dir)
  runs = select(plan, _ONLY.value, lambda r: run_state(r, study_dir) == "done")
  if _DRY_RUN.value:
    return dry_run(runs, study_dir)
  os.makedirs(study_dir, exist_ok=True)
  manifest = Manifest(study_dir, study)
  manifest.data["test_set"] = ensure_test_set(study, study_dir)
  t0 = time.time()
  ok = False
  try:
    ok = run_all(runs, study_dir, manifest)
  except KeyboardInterrupt:
    raise SystemExit("study: interrupted (the running run saved a checkpoint); rerun the same "
                     "command to resume") from None
  finally:
    manifest.invocation["wall_s"] = round(time.time() - t0, 2)
    manifest.save()
  plots_dir = _PLOTS_DIR.value or os.path.splitext(_RESULTS.value)[0]
  write_report(study, plan, study_dir, manifest, _RESULTS.value, plots_dir, spec)
  inv = manifest.invocation
  print(f"study: ran {len(inv['ran'])}, skipped {len(inv['skipped'])} finished, failed "
        f"{len(inv['failed'])}, blocked {len(inv['blocked'])}, stale {len(inv['stale'])}; "
        f"report {_RESULTS.value}", flush=True)
  if not ok:
    raise SystemExit(1)


if __name__ == "__main__":
  sys.path.insert(0, ROOT)
  app.run(main)
