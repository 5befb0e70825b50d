"""The study's runner: run states, the manifest, each run as a subprocess, the test set."""

import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time


from sslocr_jax import paths
from sslocr_jax.study import plan


def read_json(path: str, default=None):
  try:
    with open(path) as f:
      return json.load(f)
  except (FileNotFoundError, json.JSONDecodeError):
    return default


def trained_to_end(workdir: str) -> bool:
  """metrics.jsonl and checkpoints/ both reached config.total_steps (written by the loop), or
  the run stopped early: early_stop.json and a checkpoint at its step."""
  config = read_json(os.path.join(workdir, "config.json"))
  if not config:
    return False
  early = read_json(os.path.join(workdir, "early_stop.json"))
  if early and os.path.isdir(os.path.join(workdir, "checkpoints", str(early["step"]))):
    return True
  total = int(config["total_steps"])
  steps = [r.get("step", -1) for r in paths.read_metrics(workdir)]
  return (
    bool(steps)
    and max(steps) >= total
    and os.path.isdir(os.path.join(workdir, "checkpoints", str(total)))
  )


def _finished_at(study_dir: str, name: str) -> str | None:
  return (read_json(os.path.join(study_dir, name, plan.DONE)) or {}).get("finished")


def run_state(run: dict, study_dir: str) -> str:
  """done | stale (finished with another command, or from a run it needs that was redone
  since) | pending."""
  workdir = os.path.join(study_dir, run["workdir"])
  done = read_json(os.path.join(workdir, plan.DONE))
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


class Manifest:
  """STUDY_DIR/manifest.json: the machine, each invocation, and every run's history."""

  def __init__(self, study_dir: str, study):
    self.path = os.path.join(study_dir, "manifest.json")
    self.data = read_json(self.path, {}) or {}
    self.data.update(study=study.to_dict(), study_dir=study_dir, machine=machine())
    self.data.setdefault("runs", {})
    self.data.setdefault("invocations", [])
    self.invocation = dict(
      start=now(),
      argv=sys.argv[1:],
      machine=self.data["machine"],
      ran=[],
      skipped=[],
      failed=[],
      blocked=[],
      stale=[],
    )
    self.data["invocations"].append(self.invocation)

  def run(self, run: dict, study_dir: str) -> dict:
    entry = self.data["runs"].setdefault(run["name"], {"attempts": [], "wall_s": 0.0})
    entry.update(
      kind=run["kind"], workdir=run["workdir"], meta=run["meta"], command=plan.shown(run, study_dir)
    )
    return entry

  def note(self, name: str, what: str) -> None:
    self.invocation[what].append(name)
    self.data["runs"][name]["last"] = what

  def save(self) -> None:
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(self.data, f, indent=1)
    os.replace(tmp, self.path)


def now() -> str:
  return datetime.datetime.now().isoformat(timespec="seconds")


def machine() -> dict:
  """What the timings were measured on (no JAX import: the runs are subprocesses)."""
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(
        (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu
      )
  except OSError:
    pass
  out = dict(
    platform=platform.platform(),
    cpu=cpu,
    cpu_count=os.cpu_count(),
    python=platform.python_version(),
    load_avg_at_start=list(os.getloadavg()),
    jax_platforms=os.environ.get("JAX_PLATFORMS", ""),
  )
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
  cmd = [sys.executable] + plan.expand(run["args"], os.path.abspath(study_dir))
  start, t0, load = now(), time.time(), round(os.getloadavg()[0], 2)
  with open(os.path.join(workdir, "study.log"), "a") as log:
    log.write(f"\n=== {start} {shlex.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(cmd, cwd=plan.ROOT, stdout=log, stderr=subprocess.STDOUT)

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
      entry["attempts"].append(
        dict(start=start, wall_s=round(wall, 2), rc=proc.returncode, load_avg_at_start=load)
      )
      entry["wall_s"] = round(entry["wall_s"] + wall, 2)
  if rc == 0 and not complete(run, workdir):
    return -1
  if rc == 0:
    with open(os.path.join(workdir, plan.DONE), "w") as f:
      json.dump(
        dict(
          args=run["args"],
          finished=now(),
          wall_s=entry["wall_s"],
          deps={d: _finished_at(study_dir, d) for d in run["deps"]},
        ),
        f,
      )
  return rc


def _tail(path: str, n: int = 15) -> str:
  try:
    with open(path) as f:
      return "".join(f.readlines()[-n:])
  except OSError:
    return ""


def run_all(
  runs: list[dict], study_dir: str, manifest: Manifest, redo_stale: bool = False, on_done=None
) -> bool:
  """Runs every unfinished run in order; a failed run blocks the runs that need it.
  `on_done(run)` is called after each run that is (or already was) done."""
  bad = set()
  on_done = on_done or (lambda run: None)
  for i, run in enumerate(runs, 1):
    entry = manifest.run(run, study_dir)
    state = run_state(run, study_dir)
    if state == "done" and any(d in bad for d in run["deps"]):
      state = "stale"  # finished from a run that is stale itself
    tag = f"[{i}/{len(runs)}] {run['name']}"
    if state == "done":
      entry["status"] = "done"
      manifest.note(run["name"], "skipped")
      on_done(run)
      continue
    if state == "stale" and redo_stale and not any(d in bad for d in run["deps"]):
      print(f"{tag}: stale, deleting {run['workdir']} to redo it", flush=True)
      shutil.rmtree(os.path.join(study_dir, run["workdir"]))
      entry.update(attempts=[], wall_s=0.0)
      state = "pending"
    if state == "stale" or any(d in bad for d in run["deps"]):
      what = "stale" if state == "stale" else "blocked"
      entry["status"] = what
      manifest.note(run["name"], what)
      bad.add(run["name"])
      print(
        f"{tag}: {what}"
        + (
          " (finished with another command, or from a run that is stale "
          "or was redone: delete its workdir to redo it, or pass "
          "--redo_stale)"
          if what == "stale"
          else ""
        ),
        flush=True,
      )
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
      on_done(run)
  return not bad


def ensure_test_set(study, study_dir: str) -> dict:
  """Writes the held-out test LMDB once (atomically); fails if its spec has changed."""
  from sslocr_jax.data import sources  # pylint: disable=g-import-not-at-top

  spec = dict(study.test)
  path = os.path.join(study_dir, "data", spec["name"])
  spec_path = os.path.join(path, "spec.json")
  if os.path.exists(spec_path):
    old = read_json(spec_path)
    if old.get("spec") != spec:
      raise SystemExit(
        f"error: {path} was written for {old.get('spec')}, the study now asks "
        f"for {spec}: delete it (and the eval/ folders) to rewrite it"
      )
    return old
  t0 = time.time()
  src = sources.SyntheticSource(
    spec["num_samples"],
    seed=spec["seed"],
    font_split=spec["font_split"],
    word_prob=float(spec.get("word_prob", 0.6)),
  )
  tmp = path + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  n = sources.write_lmdb(
    tmp, ((r["image"], r["label"]) for r in map(src.__getitem__, range(len(src))))
  )
  info = dict(spec=spec, samples=n, wall_s=round(time.time() - t0, 2), written=now())
  with open(os.path.join(tmp, "spec.json"), "w") as f:
    json.dump(info, f, indent=1)
  os.replace(tmp, path)
  print(f"test set: {n} lines in held-out fonts -> {path} ({info['wall_s']:.0f} s)", flush=True)
  return info


def dry_run(study, runs: list[dict], study_dir: str) -> None:
  """Prints each run's state, estimated minutes and command, then the totals."""
  counts, todo, secs, state_of = {}, {}, 0.0, states(runs, study_dir)
  for r in runs:
    state = state_of[r["name"]]
    counts[(r["kind"], state)] = counts.get((r["kind"], state), 0) + 1
    est = plan.minutes(study, [r])
    if state != "done":
      todo[r["kind"]] = todo.get(r["kind"], 0) + plan.train_samples(r)
      secs += est * 60
    print(f"{state:8s} {r['name']} (~{est:.1f} min)\n         {plan.shown(r, study_dir)}")
  print("\n" + ", ".join(f"{k} {s}: {n}" for (k, s), n in sorted(counts.items())))
  print(
    "training samples to do (steps x batch, summed): "
    + ", ".join(f"{k} {n:,}" for k, n in sorted(todo.items()) if n)
  )
  print(f"estimated time to do: {secs / 60:.1f} min (at the step caps)")


def _write_json(path: str, data: dict) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(data, f, indent=1, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def committed_hash(path: str) -> str | None:
  return (read_json(path) or {}).get("hash")


def _commands(runs: list[dict]) -> list[str]:
  return [plan.shown(r, "STUDY_DIR") for r in runs]


def _curves(workdir: str, max_points: int = 60) -> dict:
  """{metric: [[step, value], ...]} of the loss and probe columns of metrics.jsonl, each
  thinned to about `max_points` points (the last one kept): small enough to commit."""
  rows = paths.read_metrics(workdir)
  keys = sorted({k for r in rows for k in r if k.endswith("loss") or k.startswith("probe_")})
  out = {}
  for k in keys:
    pts = [[r["step"], round(float(r[k]), 5)] for r in rows if isinstance(r.get(k), (int, float))]
    every = max(1, -(-len(pts) // max_points))
    out[k] = pts[::every] + (pts[-1:] if pts and (len(pts) - 1) % every else [])
  return out


def pretrain_record(run: dict, study_dir: str, manifest: Manifest) -> dict:
  """The committed result of a pretraining: its hash, size, wall time and curves."""
  workdir = os.path.join(study_dir, run["workdir"])
  config = read_json(os.path.join(workdir, "config.json")) or {}
  return dict(
    run=run["name"],
    arm=run["meta"]["arm"],
    part=run["meta"]["part"],
    hash=plan.pretrain_hash(run),
    steps=config.get("total_steps"),
    batch_size=config.get("batch_size"),
    wall_s=manifest.data["runs"].get(run["name"], {}).get("wall_s"),
    curves=_curves(workdir),
    command=plan.shown(run, "STUDY_DIR"),
    machine=_machine_brief(manifest),
    finished=now(),
  )


def _machine_brief(manifest: Manifest) -> dict:
  m = manifest.data["machine"]
  return {k: m.get(k) for k in ("cpu", "cpu_count", "load_avg_at_start", "jax", "flax")}


def cell_record(study, cell: dict, runs: list[dict], study_dir: str, manifest: Manifest) -> dict:
  """The committed result of a finished cell: scores on every test set, how its fine-tuning
  ended (early stop, best validation step), wall times, hash and commands."""
  mine = [r for r in runs if r["meta"].get("cell") == cell["name"]]
  ft = next(r for r in mine if r["kind"] == "finetune")
  ft_dir = os.path.join(study_dir, ft["workdir"])
  config = read_json(os.path.join(ft_dir, "config.json")) or {}
  early = read_json(os.path.join(ft_dir, "early_stop.json"))
  best = read_json(os.path.join(ft_dir, "best", "best.json")) or {}
  steps = [r.get("step", 0) for r in paths.read_metrics(ft_dir)]
  scores = {}
  for r in mine:
    if r["kind"] == "evaluate":
      avg = (read_json(os.path.join(study_dir, r["workdir"], "results.json")) or {})["average"]
      scores[r["meta"]["set"]] = {k: avg[k] for k in ("accuracy", "one_minus_ned", "samples")}
  walls = manifest.data["runs"]
  pre = f"pretrain/{cell['pretrain']}" if cell["pretrain"] else None
  return dict(
    {k: cell[k] for k in ("name", "part", "claim", "arm", "protocol", "fraction", "seed")},
    encoder=cell["encoder"],
    hash=plan.cell_hash(study, cell, runs),
    scores=scores,
    finetune=dict(
      step_cap=config.get("total_steps"),
      batch_size=config.get("batch_size"),
      stopped_at=early["step"] if early else max(steps, default=None),
      early_stopped=bool(early),
      best_step=best.get("step"),
      best_val=dict(best.get("others", {}), **{best.get("metric", "val"): best.get("value")})
      if best
      else {},
    ),
    wall_s=dict(
      pretrain=walls.get(pre, {}).get("wall_s") if pre else None,
      finetune=walls.get(ft["name"], {}).get("wall_s"),
      evaluate=round(
        sum(walls.get(r["name"], {}).get("wall_s", 0) for r in mine if r is not ft), 2
      ),
    ),
    commands=_commands(([r for r in runs if r["name"] == pre] if pre else []) + mine),
    machine=_machine_brief(manifest),
    finished=now(),
  )


def commit_results(study, runs: list[dict], study_dir: str, manifest, results_dir: str) -> list:
  """Writes the result file of every finished cell (and pretraining) of `runs` whose file is
  missing or has another hash; returns the paths written."""
  state, written = states(runs, study_dir), []
  for run in runs:
    if run["kind"] == "pretrain" and state[run["name"]] == "done":
      path = plan.pretrain_result_path(results_dir, run)
      if committed_hash(path) != plan.pretrain_hash(run):
        _write_json(path, pretrain_record(run, study_dir, manifest))
        written.append(path)
  for cell in {r["meta"]["cell"]: r["meta"] for r in runs if "cell" in r["meta"]}.values():
    mine = [r for r in runs if r["meta"].get("cell") == cell["name"]]
    if not all(state[r["name"]] == "done" for r in mine):
      continue
    path = plan.cell_result_path(results_dir, cell)
    if committed_hash(path) != plan.cell_hash(study, cell, runs):
      _write_json(path, cell_record(study, cell, runs, study_dir, manifest))
      written.append(path)
      print(f"result: {os.path.relpath(path, plan.ROOT)}", flush=True)
  return written


def todo_cells(study, parts: list[str], runs: list[dict], results_dir: str) -> list[dict]:
  """The cells of `parts` without a committed result of their current hash."""
  return [
    c
    for c in plan.cells(study, parts)
    if committed_hash(plan.cell_result_path(results_dir, c)) != plan.cell_hash(study, c, runs)
  ]
