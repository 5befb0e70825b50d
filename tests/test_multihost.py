"""Two local processes with jax.distributed (gloo on the CPU) behave like one process.

tests/multihost_worker.py runs the `sslocr_jax.main` CLI in two processes (one CPU device each,
mesh data=1 x fsdp=2: params sharded across the processes), 6 DiG smoke steps with checkpoints
at 3 and 6:
  straight     run uninterrupted;
  preempted    the same in another workdir with a grain worker process each, SIGTERM sent to
               the whole process group after step 3 (workers included): both processes agree,
               save and exit 0; then rerun to step 6, which must equal `straight` bit for bit;
and 2 fine-tuning smoke steps (CTC) with validation at step 2 on both processes, each over
its shard of the validation set, reduced: `best/` is written.
"""

import json
import types

import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from sslocr_jax.data import pipeline
from sslocr_jax.methods import dig
from sslocr_jax.train import checkpoint as ckpt_lib
from sslocr_jax.train import writers
from tests import scale_helpers
from tests.helpers import ROOT, load_config

NUM_PROCESSES, STEPS, LOCAL_BATCH, SIGNAL_AFTER = 2, 6, 4, 3
DIG = (
  "configs/dig.py:smoke",
  f"--config.total_steps={STEPS}",
  "--config.schedule_steps=12",
  "--config.log_every=1",
  "--config.checkpoint_every=3",
  f"--config.viz_every={STEPS}",
)
FINETUNE = (
  "configs/finetune.py:smoke,decoder=ctc",
  "--config.total_steps=2",
  "--config.eval_every=2",
  "--config.checkpoint_every=2",
  "--config.log_every=1",
)
# The preempted run: a grain worker per process; the stop flag agreed after every step.
PREEMPTED_ARGS = ("--config.data.num_workers=1", "--config.stop_check_seconds=0")


@pytest.fixture(scope="module", autouse=True)
def _fast_compiles():
  with scale_helpers.fast_compiles():
    yield


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(workdir, tag, args=DIG, env=None):
  """Starts both processes in one new process group; returns (procs, log paths, npz paths)."""
  port = _free_port()
  env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, **(env or {})}
  procs, logs, outs = [], [], []
  for i in range(NUM_PROCESSES):
    logs.append(os.path.join(workdir, f"{tag}_process_{i}.log"))
    outs.append(os.path.join(workdir, f"{tag}_out_{i}.npz"))
    with open(logs[i], "w") as log:
      procs.append(
        subprocess.Popen(
          [
            sys.executable,
            os.path.join(ROOT, "tests", "multihost_worker.py"),
            str(port),
            str(i),
            str(NUM_PROCESSES),
            workdir,
            outs[i],
            *args,
          ],
          stdout=log,
          stderr=subprocess.STDOUT,
          cwd=ROOT,
          env=env,
          process_group=0 if i == 0 else procs[0].pid,
        )
      )
  return procs, logs, outs


def _finish(procs, logs, outs, timeout=400):
  try:
    codes = [p.wait(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  outputs = []
  for log in logs:
    with open(log) as f:
      outputs.append(f.read())
  assert codes == [0, 0], "\n\n".join(o[-3000:] for o in outputs)
  return outputs, [dict(np.load(out)) for out in outs]


def _logged_steps(workdir) -> int:
  try:
    return len(writers.read_metrics(workdir))
  except (FileNotFoundError, ValueError):  # not written yet, or a line half written
    return 0


def _local_batches(result, prefix, steps):
  names = sorted({k.split("/")[2] for k in result if k.startswith(prefix + "/")} - {"metric"})
  return [{n: result[f"{prefix}/{s}/{n}"] for n in names} for s in steps]


def _num_fed(result) -> int:
  return sum(1 for k in result if k.startswith("fed/") and k.endswith("/mask"))


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("multihost"))
  started = _launch(workdir, "straight")
  scale_helpers.reference()  # compile the 1-process reference while the workers run
  outputs, results = _finish(*started)
  return workdir, outputs, results


@pytest.fixture(scope="module")
def preempted_run(tmp_path_factory, two_process_run):
  """(workdir, outputs and results of the interrupted launch, of the resumed launch)."""
  workdir = str(tmp_path_factory.mktemp("preempted"))
  procs, logs, outs = _launch(
    workdir, "first", DIG + PREEMPTED_ARGS, {"MULTIHOST_WAIT_FOR_SIGNAL_AT": str(SIGNAL_AFTER)}
  )
  # Each process waits for the signal before its 4th batch. Once step 3 is logged both have
  # passed step 3's stop check: signal the whole group (grain workers included) then.
  deadline = time.time() + 400
  while time.time() < deadline and all(p.poll() is None for p in procs):
    if _logged_steps(workdir) >= SIGNAL_AFTER:
      break
    time.sleep(0.1)
  os.killpg(procs[0].pid, signal.SIGTERM)
  first = _finish(procs, logs, outs)
  second = _finish(*_launch(workdir, "second", DIG + PREEMPTED_ARGS))
  return workdir, first, second


def test_same_losses_as_one_process(two_process_run):
  """The global batch of two processes replayed on one process gives the same losses."""
  workdir, _, results = two_process_run
  fed = [_local_batches(r, "fed", range(1, STEPS + 1)) for r in results]
  global_batches = [
    {k: np.concatenate([fed[0][s][k], fed[1][s][k]]) for k in fed[0][s]} for s in range(STEPS)
  ]
  rows = writers.read_metrics(workdir)
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # written once, by process 0
  scale_helpers.assert_same_losses(rows, scale_helpers.reference_losses(global_batches))


def test_each_process_reads_its_own_shard(two_process_run, monkeypatch):
  _, _, results = two_process_run
  config = load_config("dig", "smoke")
  for i, result in enumerate(results):
    monkeypatch.setattr(jax, "process_index", lambda i=i: i)
    monkeypatch.setattr(jax, "process_count", lambda: NUM_PROCESSES)
    it = iter(pipeline.make_dataset(config, dig.make_views))
    for got in _local_batches(result, "fed", range(1, STEPS + 1)):
      want = next(it)
      assert got["image1"].shape[0] == LOCAL_BATCH
      for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_checkpoint_saved_by_both_hosts_params_sharded(two_process_run):
  workdir, _, results = two_process_run
  ckpt = os.path.join(workdir, "checkpoints")
  assert sorted(int(d) for d in os.listdir(ckpt) if d.isdigit()) == [3, 6]
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(
    os.listdir(os.path.join(ckpt, "3", "data"))
  )
  for result in results:  # FSDP over the 2 processes: each holds half of fc1's [32, 128] kernel
    assert list(result["fc1_kernel_shape"]) == [32, 128]
    assert list(result["fc1_kernel_local_shape"]) == [16, 128]


def test_hosts_draw_different_masks_and_augmentations(two_process_run):
  """Element k of each host's batch is a different global element with its own draws: no
  mask or augmented view is repeated across the processes of a global batch."""
  _, _, results = two_process_run
  fed = [_local_batches(r, "fed", range(1, STEPS + 1)) for r in results]
  for step in range(STEPS):
    for k in ("mask", "image2"):
      a, b = fed[0][step][k], fed[1][step][k]
      for i in range(LOCAL_BATCH):
        assert not any(np.array_equal(a[i], b[j]) for j in range(LOCAL_BATCH)), (step, k, i)


def test_views_are_seeded_by_global_position(monkeypatch):
  """Process p of 2 yields global elements p, p + 2, ... of the one-process stream, masks and
  augmentations included (so a resumed process, at the same position, redraws the same)."""
  config = load_config("dig", "smoke")
  one = next(iter(pipeline.make_dataset(config, dig.make_views)))  # 8 global elements
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  for p in range(2):
    monkeypatch.setattr(jax, "process_index", lambda p=p: p)
    local = next(iter(pipeline.make_dataset(config, dig.make_views)))
    for k in one:
      np.testing.assert_array_equal(local[k], one[k][p::2])


def test_sigterm_to_the_process_group_then_resume_equals_straight_run(
  two_process_run, preempted_run
):
  straight_dir, _, straight = two_process_run
  workdir, (first_out, first), (second_out, second) = preempted_run
  # The first launch stopped mid-run (step 4, not a checkpoint step), on both hosts, saved ...
  assert all(list(r["signals"]) == [signal.SIGTERM] for r in first)
  assert [_num_fed(r) for r in first] == [SIGNAL_AFTER + 1] * 2
  assert "step 4/6" in first_out[0] and "step 5/6" not in first_out[0]
  ckpt = os.path.join(workdir, "checkpoints")
  assert sorted(int(d) for d in os.listdir(ckpt) if d.isdigit()) == [3, 4, 6]  # 6: the rerun
  # ... and the rerun resumed there: metrics, fed batches and final params equal the
  # straight run's bit for bit.
  assert writers.read_metrics(workdir) == writers.read_metrics(straight_dir)
  resumed_from = SIGNAL_AFTER + 1
  assert "steps 4->6" in second_out[0]
  assert [_num_fed(r) for r in second] == [STEPS - resumed_from] * 2
  for p in range(NUM_PROCESSES):
    got = _local_batches(second[p], "fed", range(1, STEPS - resumed_from + 1))
    want = _local_batches(straight[p], "fed", range(resumed_from + 1, STEPS + 1))
    for g, w in zip(got, want):
      for k in w:
        np.testing.assert_array_equal(g[k], w[k])
  a = ckpt_lib.restore_params(os.path.join(straight_dir, "checkpoints"), STEPS)
  b = ckpt_lib.restore_params(os.path.join(workdir, "checkpoints"), STEPS)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory, preempted_run):
  del preempted_run  # run after it: one two-process run at a time
  workdir = str(tmp_path_factory.mktemp("finetune"))
  outputs, _ = _finish(*_launch(workdir, "finetune", FINETUNE))
  return workdir, outputs


def test_validation_on_every_process_reduced_writes_best(finetune_run):
  """Both processes validate their shard (16 of the 32 lines each); the reduced figures equal
  one process's validation of the same checkpoint over the whole set, and best/ is written."""
  from sslocr_jax.methods import recognition  # pylint: disable=g-import-not-at-top
  from sslocr_jax.train import evaluation  # pylint: disable=g-import-not-at-top
  from sslocr_jax.train import sharding  # pylint: disable=g-import-not-at-top

  workdir, outputs = finetune_run
  assert "eval step 2:" in outputs[0] and "skipped" not in outputs[0] + outputs[1]
  best = json.loads(open(os.path.join(workdir, "best", "best.json")).read())
  assert best["step"] == 2 and best["metric"] == "val_accuracy"
  got = [r for r in writers.read_metrics(workdir) if "val_accuracy" in r]
  assert [r["step"] for r in got] == [2]
  config = load_config("finetune", "smoke,decoder=ctc")
  state = ckpt_lib.restore_params(os.path.join(workdir, "best"))
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1])
  want = evaluation.make_evaluator(recognition, config, mesh)(
    types.SimpleNamespace(params=state["params"], model_state=state["model_state"])
  )
  assert {k: got[0][k] for k in want} == want
  assert best["value"] == want["val_accuracy"]


def test_only_process_zero_logs_and_writes(two_process_run):
  workdir, outputs, _ = two_process_run
  assert "step 6/6" in outputs[0] and "step 1/6" not in outputs[1]
  assert "process 1 of 2: 1 local / 2 devices (cpu" in outputs[1]  # every process says
  assert "compute dtype float32 (config.dtype=auto" in outputs[0]
  assert any(f.endswith(".png") for f in os.listdir(os.path.join(workdir, "samples")))
  assert len(os.listdir(os.path.join(workdir, "tensorboard"))) == 1
