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
  """metrics.jsonl and checkpoints/ both reached config.total_steps (written by the loop)."""
  config = read_json(os.path.join(workdir, "config.json"))
  if not config:
    return False
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


def run_all(runs: list[dict], study_dir: str, manifest: Manifest, redo_stale: bool = False) -> bool:
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


def dry_run(runs: list[dict], study_dir: str) -> None:
  """Prints each run's state and command, then counts and training samples still to do."""
  counts, todo, state_of = {}, {}, states(runs, study_dir)
  for r in runs:
    state = state_of[r["name"]]
    counts[(r["kind"], state)] = counts.get((r["kind"], state), 0) + 1
    if state != "done":
      todo[r["kind"]] = todo.get(r["kind"], 0) + plan.train_samples(r)
    print(f"{state:8s} {r['name']}\n         {plan.shown(r, study_dir)}")
  print("\n" + ", ".join(f"{k} {s}: {n}" for (k, s), n in sorted(counts.items())))
  print(
    "training samples to do (steps x batch, summed): "
    + ", ".join(f"{k} {n:,}" for k, n in sorted(todo.items()) if n)
  )
