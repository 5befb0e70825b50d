"""End-to-end behaviour of the generic loop on the DiG smoke config (8 fake CPU devices)."""

import json
import os

from etils import epath
import jax
import numpy as np
import pytest

from sslocr_jax.train import checkpoint as ckpt_lib
from sslocr_jax.train import loop
from sslocr_jax.train import writers
from tests.helpers import load_config


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  """12 smoke steps straight through (checkpoints at 6 and 12), workdir given as an epath.Path."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  loop.train(load_config("dig", "smoke"), epath.Path(workdir))
  return workdir


def test_workdir_contract(straight_run):
  rows = writers.read_metrics(straight_run)
  assert [r["step"] for r in rows] == [2, 4, 6, 8, 10, 12]
  for key in ("loss", "mim_loss", "contrastive_loss", "lr", "grad_norm"):
    assert all(np.isfinite(r[key]) for r in rows), key
  assert json.load(open(os.path.join(straight_run, "config.json")))["method"] == "dig"
  assert os.listdir(os.path.join(straight_run, "tensorboard"))
  assert ckpt_lib.Checkpointer(os.path.join(straight_run, "checkpoints")).latest_step() == 12
  pngs = os.listdir(os.path.join(straight_run, "samples"))
  assert any(p.startswith("dig_reconstruction") and p.endswith(".png") for p in pngs)


def test_smoke_loss_decreases(straight_run):
  rows = writers.read_metrics(straight_run)
  assert rows[-1]["mim_loss"] < 0.8 * rows[0]["mim_loss"]
  assert rows[-1]["loss"] < rows[0]["loss"]


def test_exact_resume(straight_run, tmp_path):
  """6 steps, stop, rerun the same command to 12: the same metrics, bit for bit."""
  config = load_config("dig", "smoke")
  config.total_steps, config.schedule_steps = 6, 12  # stopped half-way, same schedules
  loop.train(config, str(tmp_path))
  config.total_steps = 12
  loop.train(config, str(tmp_path))
  assert writers.read_metrics(str(tmp_path)) == writers.read_metrics(straight_run)


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  from sslocr_jax.methods import dig
  real = dig.loss_fn

  def nan_after_7(params, model_state, batch, rng, *, step, phase, config):
    loss, aux = real(params, model_state, batch, rng, step=step, phase=phase, config=config)
    return jax.numpy.where(step >= 7, jax.numpy.nan, loss), aux
  monkeypatch.setattr(dig, "loss_fn", nan_after_7)
  with pytest.raises(loop.NonFiniteLossError, match="step 8"):
    loop.train(load_config("dig", "smoke"), str(tmp_path))
  assert ckpt_lib.Checkpointer(str(tmp_path / "checkpoints")).latest_step() == 6


def test_sigterm_saves_a_checkpoint_then_rerun_resumes(tmp_path):
  import signal
  import subprocess
  import sys
  from tests.helpers import ROOT
  cmd = [sys.executable, "-u", "-m", "sslocr_jax.main", "--config=configs/dig.py:smoke",
         f"--workdir={tmp_path}", "--config.total_steps=100000", "--config.log_every=1",
         "--config.checkpoint_every=0", "--config.viz_every=0"]
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  for line in proc.stdout:
    if line.startswith("step 3/"):
      proc.send_signal(signal.SIGTERM)
      break
  out = proc.communicate(timeout=120)[0]
  assert proc.returncode == 0, out
  saved = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints")).latest_step()
  assert saved is not None and saved >= 3, out
  rerun = subprocess.run(cmd[:-3] + ["--config.total_steps=" + str(saved + 2)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
  assert f"steps {saved}->{saved + 2}" in rerun.stdout, rerun.stdout + rerun.stderr


def test_stop_check_interval_from_step_time():
  p = loop._Preemption(check_seconds=5.0)  # pylint: disable=protected-access
  assert p.next_interval(10, 1.0) == 50  # 0.1 s steps: agree every 50 steps (5 s)
  assert p.next_interval(1, 20.0) == 1  # steps longer than the budget: every step
  assert p.next_interval(0, 0.0) == 1
  assert p.next_interval(10**7, 1.0) == p.MAX_INTERVAL


def test_stop_flag_agreed_across_hosts(monkeypatch):
  """Two (faked) hosts: the flag is all-gathered at steps both compute the same way (the
  smallest interval proposed; 1 s steps and 2 s budget here -> every 2 steps after the first
  two), and a signal on the other host alone stops this one at the next agreement."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  clock, gathered, other = [0.0], [], {"requested": 0}
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(loop, "time", type("Clock", (), {"time": staticmethod(lambda: clock[0])}))

  def allgather(mine):
    gathered.append(step)
    return np.stack([mine, np.asarray([other["requested"], 3])])
  monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
  p = loop._Preemption(check_seconds=2.0)  # pylint: disable=protected-access
  stops = {}
  for step in range(1, 9):
    clock[0] += 1.0
    if step == 5:
      other["requested"] = 1  # SIGTERM on the other host during step 5
    stops[step] = p.should_stop(step)
  assert gathered == [1, 2, 4, 6, 8]
  assert [s for s, stop in stops.items() if stop] == [6, 8]
