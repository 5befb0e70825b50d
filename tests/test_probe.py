"""The representation probe (train/probe.py): what it measures, when the loop runs it, and that
it never touches the pretraining (state, rng, data order), straight or resumed."""

import functools
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslocr_jax.data import charset as charset_lib
from sslocr_jax.data import metrics
from sslocr_jax.train import checkpoint as ckpt_lib
from sslocr_jax.train import loop
from sslocr_jax.train import probe as probe_lib
from sslocr_jax.train import registry
from sslocr_jax.train import writers
from tests.helpers import fill_like
from tests.helpers import load_config


def _bits(tree):
  """{path: raw bytes} of every array leaf."""
  return {
    jax.tree_util.keystr(p): np.asarray(v).tobytes()
    for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def _lines(cs, n: int, rng, frames: int = 32, max_len: int = 12, noise: float = 0.1):
  """n random lower36 words and frames [n, frames, 48] that spell them: one-hot of character k
  on frame 2k, of the blank (PAD) elsewhere, plus Gaussian noise; standardised per channel as
  the probe does. -> (frames float32, labels int32 [n, max_len + 1], texts)."""
  texts = ["".join(rng.choice(list(cs.chars), rng.integers(2, max_len))) for _ in range(n)]
  ids = np.full((n, frames), cs.pad)
  for i, t in enumerate(texts):
    ids[i, : 2 * len(t) : 2] = [cs.chars.index(c) for c in t]
  x = np.eye(48, dtype=np.float32)[ids] + noise * rng.normal(size=(n, frames, 48))
  x = (x - x.mean(axis=(0, 1))) / x.std(axis=(0, 1))
  return x.astype(np.float32), np.stack([cs.encode(t, max_len) for t in texts]), texts


def test_the_head_reads_features_that_spell_the_label_and_not_random_ones():
  cs = charset_lib.Charset.named("lower36")
  rng = np.random.default_rng(0)
  x_train, y_train, _ = _lines(cs, 256, rng)
  x_eval, _, texts = _lines(cs, 128, rng)
  fit = jax.jit(
    lambda *a: probe_lib.fit_and_decode(
      *a, num_classes=cs.num_classes, steps=300, batch_size=64, lr=3e-2, cs=cs
    )
  )
  key = jax.random.PRNGKey(0)

  def read(x_train, x_eval):
    ids = np.asarray(fit(jnp.asarray(x_train), jnp.asarray(y_train), jnp.asarray(x_eval), key))
    return metrics.score([cs.decode(r) for r in ids], texts).report()

  spelled = read(x_train, x_eval)
  assert spelled["accuracy"] >= 95.0, spelled
  noise = read(*(rng.normal(size=x.shape).astype(np.float32) for x in (x_train, x_eval)))
  assert noise["accuracy"] <= 2.0 and noise["one_minus_ned"] < 30.0, noise


@pytest.mark.parametrize("name, frames", [("dig", 32), ("seqclr", 33), ("siman", 33)])
def test_probe_features_are_frames_in_inference_mode(name, frames):
  """[B, T, D] float32 frames of the probe's lines (SimAN's ResNet reads 32 x 128 lines, not its
  32 x 64 patches); a line alone gives its row of a batch (no batch statistics, mask or
  dropout), different lines give different frames."""
  config = load_config(name, "smoke")
  method = registry.get_method(config)
  abstract = jax.eval_shape(
    lambda r: method.init_variables(config, r, method.example_batch(config)),
    jax.random.PRNGKey(0),
  )
  v = fill_like(nn.unbox(abstract))
  width = int(config.probe.image_width or config.image_width)
  images = np.random.default_rng(0).integers(0, 256, (4, config.image_height, width, 3), np.uint8)
  features = jax.jit(functools.partial(method.probe_features, config=config))
  batch = np.asarray(features(v["params"], v["model_state"], images))
  assert batch.shape[:2] == (4, frames) and batch.dtype == np.float32
  scale = np.abs(batch).max()  # small with fill_like's weights (SeqCLR: ~1e-3)
  assert np.isfinite(scale) and scale > 0
  alone = np.asarray(features(v["params"], v["model_state"], images[1:2]))
  np.testing.assert_allclose(alone[0], batch[1], rtol=1e-4, atol=1e-5 * scale)
  assert np.abs(batch[0] - batch[1]).max() > 1e-2 * scale


def _probe_config(smoke_run):
  """The DiG smoke run with a tiny probe every 5 steps (12 steps: probes at 0, 5, 10 and 12)."""
  config = smoke_run.config("dig")
  config.probe_every = 5
  config.probe.update(
    train_samples=32, eval_samples=16, steps=10, batch_size=8, encode_batch_size=16
  )
  return config


def test_probe_logs_at_its_steps_and_never_changes_the_run(smoke_run, tmp_path, monkeypatch):
  # Each probe call checks that it leaves the state and the frozen features bit for bit as it
  # found them.
  checked = []
  real_call = probe_lib.Probe.__call__

  def checking_call(self, state):
    if self.sets is None:
      self._prepare(state)
    images = self.sets["eval"][0]
    before = (self.frames(state, images), _bits(state))
    out = real_call(self, state)
    after = (self.frames(state, images), _bits(state))
    assert before[0].tobytes() == after[0].tobytes() and before[1] == after[1]
    checked.append(int(state.step))
    return out

  monkeypatch.setattr(probe_lib.Probe, "__call__", checking_call)
  probed = str(tmp_path / "probed")
  loop.train(_probe_config(smoke_run), probed)
  assert checked == [0, 5, 10, 12]

  rows = writers.read_metrics(probed)
  probes = [r for r in rows if "probe_accuracy" in r]
  assert [r["step"] for r in probes] == [0, 5, 10, 12]
  for r in probes:
    assert set(r) == {"step", *probe_lib.METRICS}, r
    assert 0.0 <= r["probe_accuracy"] <= 100.0 and 0.0 <= r["probe_one_minus_ned"] <= 100.0
  assert os.listdir(os.path.join(probed, "tensorboard"))

  # The same run without the probe (conftest's smoke run): the same losses at every step and
  # the same final state (params, optimizer, model_state, rng, step) and data position.
  straight = smoke_run("dig")
  assert [r for r in rows if "probe_accuracy" not in r] == writers.read_metrics(straight)
  assert _bits(ckpt_lib.restore_params(probed)) == _bits(ckpt_lib.restore_params(straight))
  data = lambda w: open(os.path.join(w, "checkpoints", "12", "data", "process_0-of-1.json")).read()
  assert data(probed) == data(straight)

  # Resumed from its middle checkpoint (step 6): probes again at 10 and 12 only, to the same
  # figures, and ends in the same state.
  resumed = str(tmp_path / "resumed")
  shutil.copytree(probed, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "12"))
  checked.clear()
  loop.train(_probe_config(smoke_run), resumed)
  assert checked == [10, 12]
  assert writers.read_metrics(resumed) == rows
  assert _bits(ckpt_lib.restore_params(resumed)) == _bits(ckpt_lib.restore_params(probed))
