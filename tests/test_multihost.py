"""Two local processes with jax.distributed (gloo on the CPU) behave like one process.

tests/multihost_worker.py runs the `sslocr_jax.main` CLI in two processes (one CPU device each,
mesh data=1 x fsdp=2: params sharded across the processes), 6 DiG smoke steps with checkpoints
at 3 and 6, then restores step 3 on both hosts and replays steps 4-6.
"""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from sslocr_jax.data import pipeline
from sslocr_jax.methods import dig
from sslocr_jax.train import writers
from tests import scale_helpers
from tests.helpers import ROOT, load_config

NUM_PROCESSES, STEPS, LOCAL_BATCH = 2, 6, 4


@pytest.fixture(scope="module", autouse=True)
def _fast_compiles():
  with scale_helpers.fast_compiles():
    yield


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("multihost"))
  port = _free_port()
  logs = [os.path.join(workdir, f"process_{i}.log") for i in range(NUM_PROCESSES)]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = []
  for i in range(NUM_PROCESSES):
    with open(logs[i], "w") as log:
      procs.append(subprocess.Popen(
          [sys.executable, os.path.join(ROOT, "tests", "multihost_worker.py"), str(port), str(i),
           str(NUM_PROCESSES), workdir, os.path.join(workdir, f"out_{i}.npz")],
          stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env))
  try:
    scale_helpers.reference()  # compile the 1-process reference while the workers run
    codes = [p.wait(timeout=400) for p in procs]
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
  results = [dict(np.load(os.path.join(workdir, f"out_{i}.npz"))) for i in range(NUM_PROCESSES)]
  return workdir, outputs, results


def _local_batches(result, prefix, steps):
  names = sorted({k.split("/")[2] for k in result if k.startswith(prefix + "/")} - {"metric"})
  return [{n: result[f"{prefix}/{s}/{n}"] for n in names} for s in steps]


def test_same_losses_as_one_process(two_process_run):
  """The global batch of two processes replayed on one process gives the same losses."""
  workdir, _, results = two_process_run
  fed = [_local_batches(r, "fed", range(1, STEPS + 1)) for r in results]
  global_batches = [{k: np.concatenate([fed[0][s][k], fed[1][s][k]]) for k in fed[0][s]}
                    for s in range(STEPS)]
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


def test_checkpoint_saved_and_restored_by_both_hosts(two_process_run):
  workdir, _, results = two_process_run
  ckpt = os.path.join(workdir, "checkpoints")
  assert sorted(int(d) for d in os.listdir(ckpt) if d.isdigit()) == [3, 6]
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(
      os.listdir(os.path.join(ckpt, "3", "data")))
  rows = {r["step"]: r for r in writers.read_metrics(workdir)}
  for result in results:
    # Restored data iterators continue each process's stream exactly ...
    replay = _local_batches(result, "replay", range(4, STEPS + 1))
    for got, want in zip(replay, _local_batches(result, "fed", range(4, STEPS + 1))):
      for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    # ... and the restored state gives the straight run's metrics, bit for bit.
    for step in range(4, STEPS + 1):
      for k in ("loss", "mim_loss", "contrastive_loss", "grad_norm"):
        assert float(result[f"replay/{step}/metric/{k}"]) == rows[step][k], (step, k)
    # FSDP over the 2 processes: each holds half of fc1's [32, 128] kernel.
    assert list(result["fc1_kernel_shape"]) == [32, 128]
    assert list(result["fc1_kernel_local_shape"]) == [16, 128]


def test_only_process_zero_logs_and_writes(two_process_run):
  workdir, outputs, _ = two_process_run
  assert "step 6/6" in outputs[0] and "step 1/6" not in outputs[1]
  assert "process 1 of 2: 1 local / 2 devices" in outputs[1]
  assert any(f.endswith(".png") for f in os.listdir(os.path.join(workdir, "samples")))
  assert len(os.listdir(os.path.join(workdir, "tensorboard"))) == 1
