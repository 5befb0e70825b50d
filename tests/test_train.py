"""End-to-end behaviour of the generic loop on the DiG smoke config (8 fake CPU devices)."""

import json
import os

import jax
import numpy as np
import pytest

from sslocr_jax.train import checkpoint as ckpt_lib
from sslocr_jax.train import loop
from sslocr_jax.train import writers
from tests.helpers import load_config


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  """12 smoke steps straight through (checkpoints at 6 and 12)."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  loop.train(load_config("dig", "smoke"), workdir)
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
