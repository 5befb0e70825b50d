"""The generic training loop: init or restore, step, log, visualise, checkpoint, preemption.

Used by every method (pretraining and fine-tuning); it never branches on the method name. The
method module is looked up from `config.method` (`sslocr_jax.methods.<name>`).
"""

import dataclasses
import json
import math
import signal
import time
import types
from typing import Any

from absl import logging
import jax
import numpy as np

from sslocr_jax import config_utils
from sslocr_jax import paths
from sslocr_jax.data import pipeline
from sslocr_jax.data import sources
from sslocr_jax.models import encoders
from sslocr_jax.train import checkpoint as ckpt_lib
from sslocr_jax.train import config_checks
from sslocr_jax.train import evaluation
from sslocr_jax.train import optim
from sslocr_jax.train import probe as probe_lib
from sslocr_jax.train import registry
from sslocr_jax.train import resolve
from sslocr_jax.train import sharding as sharding_lib
from sslocr_jax.train import state as state_lib
from sslocr_jax.train import step as step_lib
from sslocr_jax.train import writers


class NonFiniteLossError(RuntimeError):
  pass


class _Preemption:
  """Turns SIGTERM/SIGINT into a flag the loop checks after each step (then saves and exits).

  A spot VM's notice (GCE: 30 s), a TPU maintenance event (with `--autocheckpoint-enabled` the
  runtime sends SIGTERM) and `launch/tpu_vm.sh stop` all arrive as SIGTERM.

  With several processes every host must stop at the same step (a checkpoint save is
  collective), so the flag is agreed with a small all-gather: at most every `check_seconds` of
  training, whatever `log_every` is, and never more often than every step. The hosts agree on
  the next check step too (from the measured step time, `next_interval`), as each host's own
  clock would pick a different one.
  """

  MAX_INTERVAL = 10_000

  def __init__(self, check_seconds: float = 5.0):
    self.requested = False
    self.check_seconds = float(check_seconds)
    self._old = {}
    self._next_check, self._last = None, None

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._old[sig] = signal.signal(sig, self._handler)
    return self

  def _handler(self, signum, frame):
    del frame
    logging.warning("Received signal %d: saving a checkpoint and stopping.", signum)
    self.requested = True

  def next_interval(self, steps: int, seconds: float) -> int:
    """Steps until the next agreement: about `check_seconds` at the measured step time."""
    if steps <= 0 or seconds <= 0:
      return 1
    return int(max(1, min(self.MAX_INTERVAL, self.check_seconds * steps / seconds)))

  def should_stop(self, step: int) -> bool:
    """Whether to save and stop after `step` (the same answer on every process)."""
    if jax.process_count() == 1:
      return self.requested
    now = time.time()
    if self._next_check is None:  # the first step (compilation): agree right after it
      self._next_check, self._last = step, (step, now)
    if step < self._next_check:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    interval = self.next_interval(step - self._last[0], now - self._last[1])
    # The all-gather completes after the steps before it (it queues behind them on the
    # devices), so the wall time between two checks is that of the steps in between.
    votes = multihost_utils.process_allgather(np.asarray([int(self.requested), interval]))
    votes = np.asarray(votes).reshape(-1, 2)
    self._next_check, self._last = step + int(votes[:, 1].min()), (step, time.time())
    return bool(votes[:, 0].any())

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def make_optimizers(config, method, phases, batch_spec) -> tuple[dict, dict]:
  """({phase: optax transformation}, {phase: lr schedule}) from `config.optim`."""
  abstract_params = jax.eval_shape(
    lambda r: method.init_variables(config, r, state_lib.example_batch(batch_spec)),
    jax.random.PRNGKey(0),
  )["params"]
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  abstract_params = nn.unbox(abstract_params)
  optimizers, schedules = {}, {}
  for phase, keys in phases:
    optim_config = config.optim[phase] if phase in config.optim else config.optim
    optimizers[phase], schedules[phase] = optim.make_optimizer(
      optim_config,
      state_lib.split_trainable(abstract_params, keys),
      config.batch_size,
      config_utils.schedule_steps(config),
    )
  return optimizers, schedules


def jit_train_step(method, config, optimizers, schedules, phases, shardings, batch_shardings, mesh):
  """The jitted `train_step(state, batch) -> (state, metrics)`: state sharded as `shardings`
  (and donated), batch as `batch_shardings`, metrics replicated; with fsdp > 1 the params are
  gathered for compute (`sharding.gathered`)."""
  gather = sharding_lib.gathered(shardings.params) if mesh.shape["fsdp"] > 1 else None
  return jax.jit(
    step_lib.make_train_step(method, config, optimizers, schedules, phases, gather),
    in_shardings=(shardings, batch_shardings),
    out_shardings=(shardings, sharding_lib.replicated(mesh)),
    donate_argnums=(0,),
  )


@dataclasses.dataclass(frozen=True)
class Setup:
  """What `setup` builds for a run: everything `train` (and benchmarks/tests) step with."""

  method: types.ModuleType  # sslocr_jax.methods.<config.method>
  mesh: jax.sharding.Mesh
  state: Any  # the initial TrainState, sharded by `shardings`
  shardings: Any  # a TrainState of NamedShardings
  train_step: Any  # jitted (state, batch) -> (state, metrics), state donated
  dataset: Any  # the grain dataset of this process's batches
  batch_shardings: dict  # {view name: NamedSharding}
  schedules: dict  # {phase: lr schedule}
  optimizers: dict  # {phase: optax transformation}
  phases: list  # [(phase, [network names])]


def setup(config, workdir: str | None = None, mesh=None) -> Setup:
  """Builds (method, mesh, optimizers, state, shardings, jitted step, data iterator)."""
  method = registry.get_method(config)
  mesh = mesh or sharding_lib.make_mesh(config.mesh)
  config_checks.check_batch_divides(config, mesh.size, mesh.shape)
  rules = sharding_lib.logical_rules(config)
  phases = method.phases(config)
  ds = pipeline.make_dataset(config, method.make_views)
  batch_spec = pipeline.batch_spec(config, method.make_views)

  optimizers, schedules = make_optimizers(config, method, phases, batch_spec)
  state, shardings = state_lib.init_train_state(
    method, config, optimizers, phases, batch_spec, mesh, rules
  )
  batch_shardings = {k: sharding_lib.batch_sharding(mesh) for k in batch_spec}
  train_step = jit_train_step(
    method, config, optimizers, schedules, phases, shardings, batch_shardings, mesh
  )
  return Setup(
    method=method,
    mesh=mesh,
    state=state,
    shardings=shardings,
    train_step=train_step,
    dataset=ds,
    batch_shardings=batch_shardings,
    schedules=schedules,
    optimizers=optimizers,
    phases=phases,
  )


def train(config, workdir) -> dict:
  """Trains `config.total_steps` steps in `workdir`, resuming from its last checkpoint.

  `workdir`: a local folder or a bucket URI (`gs://bucket/run`), str or `epath.Path`; every
  file goes through `etils.epath`. Returns the last logged metrics.
  """
  workdir = paths.workdir_path(workdir)
  # Before anything in the workdir changes: values in range, and a rerun's config compatible
  # with the one its checkpoints were written with. config.json is (re)written only once the
  # state is initialised or restored.
  config_checks.check_values(config)
  config_checks.check_resume(
    config, workdir, bool(ckpt_lib.checkpoint_steps(workdir / "checkpoints"))
  )
  s = setup(config, workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  checkpointer = ckpt_lib.Checkpointer(
    workdir / "checkpoints",
    max_to_keep=int(config.get("keep_checkpoints", 3)),
    async_save=bool(config.get("async_checkpoints", True)),
  )
  closers = [checkpointer]  # + the metric writer and best/ once they exist
  try:
    return _train(config, workdir, s, checkpointer, closers)
  except BaseException:  # every way out closes the asynchronous checkpointer: no teardown noise
    for c in closers:
      c.close()
    raise


def _train(config, workdir, s, checkpointer, closers) -> dict:
  """The loop of `train` (which closes `closers` when this raises)."""
  method, mesh, state = s.method, s.mesh, s.state
  data_iter = iter(s.dataset)
  start = 0
  if checkpointer.latest_step() is not None:
    state, start = checkpointer.restore(ckpt_lib.abstract_like(state, s.shardings), data_iter)
    writers.truncate_metrics(workdir, start)
    logging.info("Resuming from step %d", start)
  elif config.get("init_from", "") and hasattr(method, "load_pretrained"):  # a fresh run
    state = resolve.load_pretrained(method, state, config)
  writers.write_config(config, workdir)
  writer = writers.MetricWriter(workdir)
  closers.append(writer)
  total = int(config.total_steps)
  n_params = state_lib.count_params(state.params)
  _log(
    f"{config.method}: {n_params / 1e6:.2f}M params, {jax.device_count()} devices "
    f"mesh {dict(mesh.shape)}, global batch {config.batch_size}, steps {start}->{total}, "
    f"workdir {workdir}"
  )
  _log(
    f"compute dtype {encoders.compute_dtype(config).name} (config.dtype={config.dtype}; "
    f"params and optimizer state float32), {pipeline.resolve_num_workers(config.data)} data "
    f"workers per process, remat {config.get('model', {}).get('remat', 'none')}"
  )

  visualize = None
  if hasattr(method, "visualize") and config.get("viz_every", 0):
    visualize = jax.jit(
      lambda st, b: method.visualize(st.params, st.model_state, b, jax.random.PRNGKey(0), config),
      out_shardings=sharding_lib.replicated(mesh),
    )  # readable on every host
  evaluator, best = None, None
  if hasattr(method, "predict") and config.get("eval_every", 0):  # a recognizer: validate
    evaluator = evaluation.make_evaluator(method, config, mesh)
    best = _BestCheckpoint(workdir, config.get("best_metric", ""))
    closers.append(best)
  probe = None
  if probe_lib.enabled(method, config):  # a pretraining method: probe the frozen encoder
    probe = probe_lib.Probe(method, config, mesh)
    if start == 0:  # the untrained encoder: the floor of the curve
      _probe(probe, state, 0, writer)
  log_every = max(int(config.get("log_every", 50)), 1)
  ckpt_every = int(config.get("checkpoint_every", 1000))
  epoch_steps = _epoch_steps(config)
  pending, last, bad = [], {}, None
  t0, seen0 = time.time(), start
  step = start
  early = start > 0 and _resume_stopped_early(config, workdir, start, best)
  with _Preemption(config.get("stop_check_seconds", 5.0)) as preempt:
    while step < total and not early:
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        batch = sharding_lib.global_batch(next(data_iter), mesh)
        state, metrics = s.train_step(state, batch)
      step += 1
      pending.append(metrics)
      if step == start + 1:  # the first step compiles: time from its end
        jax.block_until_ready(metrics)
        t0, seen0 = time.time(), step
      stop = preempt.should_stop(step)  # a signal arriving later: at the next agreement
      must_save = step == total or stop or (ckpt_every and step % ckpt_every == 0)
      if step % log_every == 0 or must_save:
        last, bad = _flush(pending, writer, step - len(pending) + 1)
        pending = []
        if bad is not None:
          break
        rate = (step - seen0) * config.batch_size / (time.time() - t0) if step > seen0 else 0.0
        eta = (total - step) * config.batch_size / rate if rate else float("nan")
        _log(f"step {step}/{total} | {rate:.1f} img/s | ETA {_hms(eta)} | {_terms(last)}")
      if epoch_steps and step % epoch_steps == 0:
        _report_skipped(f"epoch {step // epoch_steps} (step {step})")
      if visualize is not None and (step % config.viz_every == 0 or step == total):
        writer.write_images(step, jax.device_get(visualize(state, batch)))
      if evaluator is not None and (step % config.eval_every == 0 or step == total):
        results = evaluator(state)
        writer.write_scalars(step, results)
        _log(f"eval step {step}: " + " ".join(f"{k} {v:.4g}" for k, v in results.items()))
        best.update(step, state, results)
        early = step % config.eval_every == 0 and early_stop_due(config, step, best)
      if probe is not None and (step % probe.every == 0 or step == total):
        _probe(probe, state, step, writer)
      if early and pending:  # the steps since the last log line, before the last checkpoint
        last, bad = _flush(pending, writer, step - len(pending) + 1)
        pending = []
        if bad is not None:
          break
      if must_save or early:
        checkpointer.save(step, state, data_iter)
      if early:
        _write_early_stop(config, workdir, step, best.step)
        break
      if stop:
        break
  _report_skipped(f"end of run (step {step})")
  checkpointer.close()
  writer.close()
  if best is not None:
    best.close()
  if bad is not None:
    raise NonFiniteLossError(
      f"non-finite loss at step {bad[0]} ({bad[1]}); stopped without saving. The last good "
      f"checkpoint is step {checkpointer.latest_step()} in {workdir}/checkpoints"
    )
  return last


def _probe(probe, state, step: int, writer) -> None:
  """Runs the representation probe on `state` (read only) and logs its figures at `step`."""
  results = probe(state)
  writer.write_scalars(step, results)
  _log(
    f"probe step {step}: "
    + " ".join(f"{k} {v:.4g}" for k, v in results.items())
    + f" ({probe.seconds:.1f} s)"
  )


def _epoch_steps(config) -> int:
  """Steps per pass over the training records (0 when unknown)."""
  try:
    n = pipeline.num_records(config.data)
  except Exception:  # pylint: disable=broad-except  # a summary, never a reason to stop
    return 0
  return max(1, n // int(config.batch_size)) if n else 0


def early_stop_due(config, step: int, best) -> bool:
  """Early stopping (`config.early_stop_patience` P > 0; 0 or absent = off), checked after the
  evaluation at `step`, a multiple of `eval_every` (E): stop when `step >= early_stop_min_steps`
  and `step - best.step >= P * E`, best/ holding the best `best_metric` so far (a tie counts as
  an improvement: the later step wins), i.e. P evaluations in a row below the best value. A
  run whose best value is still 0 never stops: a recognizer on CTC's blank plateau (0% for
  hundreds of steps, then rising) has learned nothing yet, and ties on 0 would be broken by
  1-NED noise. Stateless (a step and best/best.json), so a resumed run stops where an
  uninterrupted one would. The run saves a checkpoint at `step` and writes
  WORKDIR/early_stop.json."""
  patience = int(config.get("early_stop_patience", 0) or 0)
  if patience <= 0 or best is None or best.step is None or not config.get("eval_every", 0):
    return False
  if step < int(config.get("early_stop_min_steps", 0) or 0) or best.key[0] <= 0:
    return False
  return step - best.step >= patience * int(config.eval_every)


def _write_early_stop(config, workdir, step: int, best_step: int) -> None:
  """early_stop.json: {"step", "best_step", "patience", "eval_every", "min_steps"}."""
  _log(f"early stop at step {step}: best {config.best_metric} at step {best_step}")
  if jax.process_index() == 0:
    info = dict(
      step=step,
      best_step=best_step,
      patience=int(config.early_stop_patience),
      eval_every=int(config.eval_every),
      min_steps=int(config.get("early_stop_min_steps", 0) or 0),
    )
    paths.write_text(paths.workdir_path(workdir) / "early_stop.json", json.dumps(info))


def _resume_stopped_early(config, workdir, start: int, best) -> bool:
  """A restored run that had stopped early (by the rule at its last evaluation step, which may
  differ from the one it stopped with if early_stop_* changed) stays stopped; else a stale
  early_stop.json is removed so that the run is not taken for finished."""
  path = paths.workdir_path(workdir) / "early_stop.json"
  every = int(config.get("eval_every", 0) or 0)
  last_eval = start - start % every if every else start
  if early_stop_due(config, last_eval, best):
    _log(f"stopped early at step {start}; nothing to do")
    if not path.exists():  # early_stop_* lowered since: the rule now says it is over
      _write_early_stop(config, workdir, start, best.step)
    return True
  if jax.process_index() == 0 and path.exists():
    path.unlink()
  return False


def _report_skipped(when: str) -> None:
  """Prints the records skipped so far, per folder and reason (training and validation data;
  counted in this process: with data.num_workers > 0 the worker processes count theirs)."""
  lines = sources.bad_summary()
  if lines:
    _log(f"{when}: " + "; ".join(lines))


class _BestCheckpoint:
  """Keeps the train state with the highest `metric` (e.g. val_accuracy) in WORKDIR/best/.

  Ties (0% accuracy early in training is common) are broken by the other evaluation metrics
  in name order (val_one_minus_ned for recognition), then by the later step: a tie never keeps
  a stale early step. best.json: {"step", "metric", "value", "others": {name: value}}.
  """

  def __init__(self, workdir, metric: str):
    self.metric = metric
    self.path = paths.workdir_path(workdir) / "best" / "best.json"
    self.checkpointer = ckpt_lib.Checkpointer(self.path.parent, max_to_keep=1, async_save=False)
    self.key, self.step = None, None  # the best value (with its tie-breakers) and its step
    if self.path.exists():
      saved = json.loads(self.path.read_text())
      self.key = (saved["value"], *[v for _, v in sorted(saved.get("others", {}).items())])
      self.step = int(saved["step"])

  def update(self, step: int, state, results: dict) -> None:
    if not self.metric or self.metric not in results:
      return
    others = {k: float(v) for k, v in sorted(results.items()) if k != self.metric}
    key = (float(results[self.metric]), *others.values())
    if self.key is not None and key < self.key:  # equal: the later step wins
      return
    self.key, self.step = key, step
    if step in self.checkpointer.manager.all_steps():  # a resumed run evaluating a step again
      self.checkpointer.manager.delete(step)
    self.checkpointer.save(step, state)
    if jax.process_index() == 0:
      paths.write_text(
        self.path,
        json.dumps({"step": step, "metric": self.metric, "value": key[0], "others": others}),
      )

  def close(self) -> None:
    self.checkpointer.close()


def _flush(pending, writer, first_step):
  """Writes the metrics of the steps since the last flush; returns (means, first bad step)."""
  values = jax.device_get(pending)
  for i, m in enumerate(values):
    nonfinite = [k for k, v in m.items() if not np.isfinite(v)]
    if nonfinite:
      return {}, (first_step + i, ", ".join(f"{k}={m[k]}" for k in nonfinite))
  means = {k: float(np.mean([m[k] for m in values])) for k in values[-1]}
  writer.write_scalars(first_step + len(values) - 1, means)
  return means, None


def _terms(metrics: dict) -> str:
  """Loss terms first (loss, then each *_loss / accuracy), then the learning rate."""
  first = [k for k in metrics if k == "loss" or k.endswith("/loss")]
  terms = [k for k in sorted(metrics) if ("loss" in k or "acc" in k) and k not in first]
  lrs = [k for k in sorted(metrics) if k.endswith("lr")]
  return " ".join(f"{k} {metrics[k]:.4g}" for k in first + terms + lrs)


def _log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


def _hms(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
