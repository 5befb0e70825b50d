"""The contract every method meets (docs/interfaces.md), one parametrized test per method.

Each smoke run (tests/conftest.py: `smoke_run`, trained once a session and shared with the
method's own tests) writes the workdir the loop promises and learns; rerun from its middle
checkpoint it reproduces the same metrics and state bit for bit; the networks it declares
export to a PyTorch state dict and import back unchanged; the module has every hook the
interface doc lists, and the train/export/predict code calls no hook the doc leaves out.
"""

import json
import os
import re
import shutil

import jax
import numpy as np
import pytest

from sslocr_jax.models import torch_mapping
from sslocr_jax.train import checkpoint as ckpt_lib
from sslocr_jax.train import registry
from sslocr_jax.train import torch_state
from sslocr_jax.train import writers
from tests.helpers import ROOT

METHODS = ("dig", "seqclr", "siman", "recognition")


def _dig(rows, workdir, workdirs):
  assert rows[-1]["mim_loss"] < 0.8 * rows[0]["mim_loss"]
  assert rows[-1]["loss"] < rows[0]["loss"]


def _seqclr(rows, workdir, workdirs):
  first, last = rows[0]["loss"], np.mean([r["loss"] for r in rows[-2:]])
  assert last < first - 0.3, [r["loss"] for r in rows]


def _siman(rows, workdir, workdirs):
  assert rows[-1]["pixel_loss"] < 0.9 * rows[0]["pixel_loss"]
  assert rows[0]["adv_weight"] == 0.0 and rows[-1]["adv_weight"] > 0
  restored = ckpt_lib.restore_params(workdir)
  assert set(restored["params"]) == {"encoder", "san", "decoder", "discriminator"}
  assert set(restored["opt_state"]) == {"generator", "discriminator"}


def _recognition(rows, workdir, workdirs):
  """Frozen-encoder decoder evaluation of the DiG run: DiG's encoder, bit for bit, at the end
  (the online encoder, not its momentum copy); validation every eval_every; best/ kept."""
  final, dig_state = ckpt_lib.restore_params(workdir), ckpt_lib.restore_params(workdirs("dig"))
  assert int(final["step"]) == 8
  jax.tree.map(
    np.testing.assert_array_equal, final["params"]["encoder"], dig_state["params"]["encoder"]
  )
  assert [r["step"] for r in rows if "val_accuracy" in r] == [4, 8]
  assert all(0.0 <= r["val_accuracy"] <= 100.0 for r in rows if "val_accuracy" in r)
  assert any("train_accuracy" in r and "loss" in r for r in rows)
  best = ckpt_lib.Checkpointer(os.path.join(workdir, "best"), async_save=False)
  assert best.latest_step() in (4, 8)
  best.close()


# method: (logged steps, finite metrics, sample image prefix, method-specific checks)
EXPECTED = {
  "dig": (
    [2, 4, 6, 8, 10, 12],
    ("loss", "mim_loss", "contrastive_loss", "lr", "grad_norm"),
    "dig_reconstruction",
    _dig,
  ),
  "seqclr": (
    [2, 4, 6, 8, 10, 12],
    ("loss", "contrastive_acc", "lr", "grad_norm"),
    "seqclr_views",
    _seqclr,
  ),
  "siman": (
    [4, 8, 12, 16, 20, 24],
    (
      "loss",
      "pixel_loss",
      "adv_loss",
      "adv_weight",
      "disc_accuracy",
      "disc_real_loss",
      "disc_fake_loss",
      "generator/loss",
      "discriminator/loss",
      "generator/lr",
      "discriminator/lr",
    ),
    "siman_restoration",
    _siman,
  ),
  "recognition": ([2, 4, 6, 8], ("loss", "train_accuracy"), None, _recognition),
}


def _bits(tree):
  """{path: raw bytes} of every array leaf (optax states included)."""
  return {
    jax.tree_util.keystr(p): np.asarray(v).tobytes()
    for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


@pytest.mark.parametrize("name", METHODS)
def test_method_contract(name, smoke_run, tmp_path):
  config = smoke_run.config(name)
  method = registry.get_method(config)
  straight = smoke_run(name)
  steps, keys, sample, specific = EXPECTED[name]

  # Runs straight: the workdir contract, and it learns.
  rows = writers.read_metrics(straight)
  assert [r["step"] for r in rows if "loss" in r] == steps
  for key in keys:
    assert all(np.isfinite(r[key]) for r in rows if "loss" in r), key
  assert json.load(open(os.path.join(straight, "config.json")))["method"] == config.method
  assert os.listdir(os.path.join(straight, "tensorboard"))
  checkpoints = ckpt_lib.checkpoint_steps(os.path.join(straight, "checkpoints"))
  assert checkpoints[0] == config.total_steps and len(checkpoints) >= 2, checkpoints
  if sample:
    pngs = os.listdir(os.path.join(straight, "samples"))
    assert any(p.startswith(sample) and p.endswith(".png") for p in pngs), pngs
  specific(rows, straight, smoke_run)

  # Resumes exactly: the same command, rerun from the middle checkpoint (the last one gone),
  # gives the same metrics and the same final state, bit for bit.
  resumed = str(tmp_path / "resumed")
  shutil.copytree(straight, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", str(checkpoints[0])))
  from sslocr_jax.train import loop  # pylint: disable=g-import-not-at-top

  loop.train(smoke_run.config(name), resumed)
  assert writers.read_metrics(resumed) == rows
  a, b = ckpt_lib.restore_params(straight), ckpt_lib.restore_params(resumed)
  for tree in ("params", "opt_state", "model_state"):
    assert _bits(a[tree]) == _bits(b[tree]), tree

  # Exports what it declares (all its networks with `export_networks`, else the encoder) and
  # imports it back unchanged.
  include = "all" if hasattr(method, "export_networks") else "encoder"
  flat = torch_state.export_state(
    {"params": a["params"], "model_state": a["model_state"]}, config, include
  )
  specs, _ = torch_state.network_specs(config, include)
  for prefix, _, _ in specs:
    assert any(k.startswith(prefix) for k in flat), prefix
  back = torch_state.import_state(flat, config, include)
  for tree in ("params", "model_state"):
    ours = torch_mapping.flatten(a[tree])
    for k, v in torch_mapping.flatten(back[tree]).items():
      np.testing.assert_array_equal(v, ours[k], err_msg=k)
  assert set(back["params"]) >= {"encoder"}

  # Meets the interface doc: every listed hook; optional hooks in their documented groups.
  required, optional = _documented_hooks()
  for hook in required:
    assert callable(getattr(method, hook, None)), f"{name} lacks {hook}"
  if hasattr(method, "predict"):
    assert hasattr(method, "eval_views") and hasattr(method, "charset_from_config")
  batch = method.example_batch(config)
  assert all(isinstance(v, np.ndarray) or hasattr(v, "shape") for v in batch.values())
  assert set(optional) >= {"load_pretrained", "predict", "export_networks", "visualize"}


def _documented_hooks() -> tuple[list[str], list[str]]:
  """(required, optional) hook names of docs/interfaces.md's Methods section."""
  text = open(os.path.join(ROOT, "docs", "interfaces.md")).read()
  section = text.split("## Methods", 1)[1].split("\n## ", 1)[0]
  required, optional = section.split("Optional hooks", 1)
  names = lambda s: re.findall(r"`([a-z_]+)\(", s)
  return names(required.replace("optional `visualize", "")), names(optional) + ["visualize"]


def test_the_library_calls_only_documented_hooks():
  required, optional = _documented_hooks()
  called = set()
  for folder, _, files in os.walk(os.path.join(ROOT, "sslocr_jax")):
    for f in files:
      if f.endswith(".py"):
        called |= set(re.findall(r"\bmethod\.([a-z_]+)", open(os.path.join(folder, f)).read()))
  assert called and called <= set(required) | set(optional), called - set(required + optional)
