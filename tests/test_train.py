"""End-to-end behaviour of the generic loop on the DiG smoke config (8 fake CPU devices)."""

import jax
import numpy as np
import pytest

from sslocr_jax.train import checkpoint as ckpt_lib
from sslocr_jax.train import loop
from tests.helpers import load_config


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


def test_sigterm_saves_a_checkpoint_then_rerun_resumes(tmp_path, monkeypatch, capsys):
  """A SIGTERM mid-run (delivered to this process once step 3 is logged) saves a checkpoint and
  returns normally; the rerun resumes from it. In-process: a subprocess would only add a jax
  import and a compile; the CLI's handling of the same signal, exit code included, is
  tests/test_multihost.py's (two processes)."""
  import os  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top

  config = load_config("dig", "smoke")
  config.total_steps, config.schedule_steps = 100000, 12  # the smoke schedule: one program
  config.log_every, config.checkpoint_every, config.viz_every = 1, 0, 0
  real_log = loop._log  # pylint: disable=protected-access

  def log_then_signal(msg):
    real_log(msg)
    if msg.startswith("step 3/"):
      os.kill(os.getpid(), signal.SIGTERM)

  handler = signal.getsignal(signal.SIGTERM)
  monkeypatch.setattr(loop, "_log", log_then_signal)
  loop.train(config, str(tmp_path))
  out = capsys.readouterr().out
  saved = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints")).latest_step()
  assert saved is not None and 3 <= saved < 10, out
  assert signal.getsignal(signal.SIGTERM) == handler  # the loop restored the handler
  monkeypatch.setattr(loop, "_log", real_log)
  config.total_steps = saved + 2
  loop.train(config, str(tmp_path))
  assert f"steps {saved}->{saved + 2}" in capsys.readouterr().out


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


def test_layer_decay_counts_the_blocks_of_the_trainable_params():
  """BEiT/DiG layer decay: block i's update is scaled by decay ** (depth - i), embeddings by
  decay ** (depth + 1), the rest not at all; depth read from the param tree (no model field)."""
  import ml_collections
  from sslocr_jax.train import optim

  ones = lambda: {"kernel": np.ones((2, 2), np.float32)}
  params = {
    "encoder": {"patch_embed": ones(), "blocks_0": ones(), "blocks_1": ones(), "blocks_2": ones()},
    "head": ones(),
  }
  assert optim.num_blocks(params) == 3 and optim.num_blocks({"head": ones()}) == 0
  config = ml_collections.ConfigDict(
    dict(name="sgd", momentum=0.0, base_lr=1.0, warmup_steps=0, layer_decay=0.5)
  )
  tx, _ = optim.make_optimizer(config, params, global_batch=1, total_steps=10)
  updates, _ = tx.update(jax.tree.map(np.ones_like, params), tx.init(params), params)
  scale = {k: float(-v["kernel"][0, 0]) for k, v in updates["encoder"].items()}
  assert scale == pytest.approx(
    {"patch_embed": 0.5**4, "blocks_0": 0.5**3, "blocks_1": 0.5**2, "blocks_2": 0.5}
  )
  assert float(-updates["head"]["kernel"][0, 0]) == pytest.approx(1.0)


def test_early_stopping_stops_after_patience_keeps_best_and_stays_stopped(tmp_path, monkeypatch):
  """Scripted validation accuracy by step: 0 (plateau: no stop), 20, 30 (best), 25, 10 -> with
  patience 2 (evaluations 2 steps apart) the run stops at step 10, best/ holds step 6, and a
  rerun of the same command trains nothing."""
  import json

  from sslocr_jax.train import evaluation

  script = {2: 0.0, 4: 20.0, 6: 30.0, 8: 25.0, 10: 10.0, 12: 50.0}

  def scripted(method, config, mesh):
    del method, config, mesh
    return lambda state: {
      "val_accuracy": script[int(jax.device_get(state.step))],
      "val_one_minus_ned": 1.0,
    }

  monkeypatch.setattr(evaluation, "make_evaluator", scripted)
  config = load_config("finetune", "smoke")
  config.total_steps, config.eval_every, config.checkpoint_every = 12, 2, 0
  config.early_stop_patience, config.early_stop_min_steps = 2, 4
  assert not loop.early_stop_due(config, 4, None)
  loop.train(config, str(tmp_path))
  early = json.loads((tmp_path / "early_stop.json").read_text())
  assert (early["step"], early["best_step"], early["patience"]) == (10, 6, 2)
  assert json.loads((tmp_path / "best" / "best.json").read_text())["step"] == 6
  assert ckpt_lib.Checkpointer(str(tmp_path / "checkpoints")).latest_step() == 10
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert max(r["step"] for r in rows) == 10 and any("loss" in r for r in rows if r["step"] == 10)
  loop.train(config, str(tmp_path))  # resumed: stopped, nothing trained, the file kept
  assert ckpt_lib.Checkpointer(str(tmp_path / "checkpoints")).latest_step() == 10
  assert (tmp_path / "early_stop.json").exists()
