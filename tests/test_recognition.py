"""Recognition method: label checks, overfitting with each decoder, init_from, frozen encoder."""

import logging

import jax
import numpy as np
import pytest

from sslocr_jax.data import augment
from sslocr_jax.data import charset as charset_lib
from sslocr_jax.data import sources
from sslocr_jax.data import metrics
from sslocr_jax.methods import recognition
from sslocr_jax.train import evaluation
from sslocr_jax.train import loop
from sslocr_jax.train import resolve
from sslocr_jax.train import sharding as sharding_lib
from sslocr_jax.train import state as state_lib
from tests.helpers import fill_like
from tests.helpers import load_config
from tests.helpers import xla_optimizations


def _bits_equal(a, b) -> bool:
  fa, fb = recognition._flat(a), recognition._flat(b)  # pylint: disable=protected-access
  return fa.keys() == fb.keys() and all(
    np.array_equal(np.asarray(fa[k]).view(np.uint8), np.asarray(fb[k]).view(np.uint8)) for k in fa
  )


def test_make_views_drops_bad_labels_by_index(caplog):
  config = load_config("finetune", "smoke")
  image = np.full((20, 60, 3), 200, np.uint8)
  rng = np.random.default_rng(0)
  ok = recognition.make_views({"image": image, "label": "Hello", "index": 3}, rng, config)
  assert ok["image"].shape == (32, 128, 3) and ok["image"].dtype == np.uint8
  cs = charset_lib.Charset()
  assert cs.decode(ok["label"]) == "Hello" and ok["label"].shape == (config.max_len + 1,)
  before = dict(recognition.DROPPED)
  with caplog.at_level(logging.WARNING):
    for index, label in [(11, ""), (12, "x" * 26), (13, "caf\u00e9")]:
      assert (
        recognition.make_views({"image": image, "label": label, "index": index}, rng, config)
        is None
      )
  for reason in ("empty", "too_long", "out_of_charset"):
    assert recognition.DROPPED[reason] == before.get(reason, 0) + 1
  text = caplog.text
  assert "record 11" in text and "record 12" in text and "record 13" in text
  config.oov = "unk"  # the other policy: unknown characters become UNK, nothing dropped
  unk = recognition.make_views({"image": image, "label": "caf\u00e9", "index": 14}, rng, config)
  assert list(unk["label"][:5]) == [
    cs.encode("caf", 25)[0],
    cs.encode("caf", 25)[1],
    cs.encode("caf", 25)[2],
    cs.unk,
    cs.eos,
  ]


def _short_words(n=64, size=(16, 64)):
  """n synthetic lines whose labels are 2-8 letters/digits, resized to `size`."""
  src = sources.SyntheticSource(4000, seed=7)
  images, labels = [], []
  for i in range(len(src)):
    r = src[i]
    if r["label"].isalnum() and 2 <= len(r["label"]) <= 8:
      images.append(augment.resize(r["image"], *size))
      labels.append(r["label"])
      if len(labels) == n:
        break
  return np.stack(images), labels


@pytest.fixture
def optimized_compiles():
  """XLA's full backend optimisation (tests/conftest.py turns most of it off): this test runs
  hundreds of steps, and its steps run ~40% faster optimised for ~3 s more compile (CTC, 175
  steps: 40 vs 55 CPU seconds)."""
  with xla_optimizations(True):
    yield


@pytest.mark.parametrize(
  "decoder,depth,steps", [("ctc", 2, 175), ("attention", 1, 150), ("transformer", 1, 120)]
)
def test_tiny_model_overfits_64_lines(decoder, depth, steps, optimized_compiles):
  """A tiny ViT (16x64 input, 64 tokens) + decoder learns 64 labeled lines by heart.

  (Steps: each decoder reached 100% about 25-50 steps earlier in trial runs; CTC at step
  122-131 in 2026-12.)
  """
  del optimized_compiles
  config = load_config("finetune", f"smoke,decoder={decoder}")
  config.image_height, config.image_width = 16, 64
  config.augment, config.max_len, config.batch_size, config.total_steps = False, 8, 64, steps
  config.model.update(embed_dim=64, depth=depth, drop_path_rate=0.0)
  config.transformer.d_model = config.attention.hidden_dim = config.attention.attention_dim = 64
  config.optim.update(base_lr=1e-2, warmup_steps=10, end_lr=1e-3, weight_decay=0.0, layer_decay=1.0)
  images, labels = _short_words()
  cs = recognition.charset_from_config(config)
  mesh = sharding_lib.make_mesh(config.mesh, jax.devices()[:1])  # no collectives: faster
  s = loop.setup(config, mesh=mesh)
  state, train_step = s.state, s.train_step
  batch = sharding_lib.global_batch(
    {"image": images, "label": np.stack([cs.encode(t, config.max_len) for t in labels])}, mesh
  )
  for _ in range(config.total_steps):
    state, m = train_step(state, batch)
  predict = evaluation.make_batch_predictor(recognition, config, mesh, 64)
  ids, conf = predict(state.params, state.model_state, images)
  preds = [cs.decode(row) for row in ids]
  assert metrics.score(preds, labels).report()["accuracy"] == 100.0, (float(m["loss"]), preds)
  assert np.all((conf > 0) & (conf <= 1))


def test_init_from_another_size_says_what_differs(smoke_run):
  config = load_config("finetune", "smoke")
  config.init_from = smoke_run("dig")
  config.model.update(embed_dim=48, depth=3)
  batch = {
    "image": np.zeros((2, 32, 128, 3), np.uint8),
    "label": np.zeros((2, config.max_len + 1), np.int32),
  }
  params = jax.eval_shape(
    lambda r: recognition.init_variables(config, r, batch), jax.random.PRNGKey(0)
  )["params"]
  state = state_lib.TrainState(step=0, params=params, opt_state={}, model_state={}, rng=None)
  with pytest.raises(ValueError) as e:
    resolve.load_pretrained(recognition, state, config)
  msg = str(e.value)
  assert "shape blocks_0/attn/qkv/kernel: checkpoint (32, 96) vs model (48, 144)" in msg
  assert "missing in checkpoint: blocks_2/" in msg
  assert "method=dig" in msg and "size=smoke" in msg and "embed_dim=32" in msg


def test_sequence_loss_per_word_and_per_token_by_hand():
  """Two words of 3 and 1 targets (incl. EOS) with token losses 1, 2, 3 | 4: per word (the
  release's SeqCrossEntropyLoss) (1+2+3 + 4) / 2 = 5; per token 10 / 4 = 2.5."""
  ce = np.array([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0]], np.float32)
  mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], np.float32)
  assert float(recognition.sequence_loss(ce, mask, "word")) == 5.0
  assert float(recognition.sequence_loss(ce, mask, "token")) == 2.5
  with pytest.raises(ValueError, match="loss_norm"):
    recognition.sequence_loss(ce, mask, "batch")


def test_cnn_only_seqclr_encoder_finetunes_with_the_decoder_bilstm():
  """seqclr_encoder_stage=cnn pretrains the CNN alone; `decoder_bilstm_layers=1` builds the
  recognizer's encoder without its BiLSTM (so init_from matches) and trains a BiLSTM with the
  decoder, also when the encoder is frozen."""
  from sslocr_jax.methods import seqclr  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  key = jax.random.PRNGKey(0)
  sc = load_config("seqclr", "smoke")
  sc.seqclr_encoder_stage = "cnn"
  views = {"image1": np.zeros((2, 32, 128, 3), np.uint8)}
  pre = fill_like(nn.unbox(jax.eval_shape(lambda r: seqclr.init_variables(sc, r, views), key)))
  config = load_config("finetune", "smoke,encoder=resnet,decoder=ctc")
  config.decoder_bilstm_layers, config.init_from = 1, "seqclr-cnn-run"
  cs = recognition.charset_from_config(config)
  labels = np.stack([cs.encode(t, config.max_len) for t in ("ab", "c1")])
  batch = {
    "image": np.random.default_rng(0).integers(0, 256, (2, 32, 128, 3), np.uint8),
    "label": labels,
  }
  fresh = fill_like(
    nn.unbox(jax.eval_shape(lambda r: recognition.init_variables(config, r, batch), key)), seed=1
  )
  assert set(fresh["params"]) == {"encoder", "sequence", "decoder"}
  assert set(fresh["params"]["sequence"]) == {"lstm_0"}
  assert not any(k.startswith("lstm_") for k in fresh["params"]["encoder"])
  assert recognition.phases(config) == [("main", ["encoder", "sequence", "decoder"])]
  import types  # pylint: disable=g-import-not-at-top

  source = types.SimpleNamespace(
    params=pre["params"], model_state=pre["model_state"], origin="seqclr smoke, cnn stage"
  )
  state = state_lib.TrainState(
    step=0, params=fresh["params"], opt_state={}, model_state=fresh["model_state"], rng=None
  )
  state = recognition.load_pretrained(state, config, source)  # would raise on any mismatch
  assert _bits_equal(state.params["encoder"], pre["params"]["encoder"])

  config.freeze_encoder = True
  assert recognition.phases(config) == [("main", ["sequence", "decoder"])]

  def loss(params):
    return recognition.loss_fn(
      params, state.model_state, batch, jax.random.PRNGKey(1), step=0, phase="main", config=config
    )[0]

  value, grads = jax.jit(jax.value_and_grad(loss))(state.params)
  assert np.isfinite(float(value))
  assert all(float(np.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads["encoder"]))
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads["sequence"]))
  assert max(float(np.abs(g).max()) for g in jax.tree.leaves(grads["sequence"])) > 0
