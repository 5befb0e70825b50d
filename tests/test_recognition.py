"""Recognition method: label checks, overfitting with each decoder, init_from, frozen encoder."""

import logging

import jax
import numpy as np
import pytest

from sslocr_jax.data import augment
from sslocr_jax.data import charset as charset_lib
from sslocr_jax.data import sources
from sslocr_jax.evaluate import metrics
from sslocr_jax.methods import recognition
from sslocr_jax.train import checkpoint as ckpt_lib
from sslocr_jax.train import loop
from sslocr_jax.train import sharding as sharding_lib
from sslocr_jax.train import state as state_lib
from sslocr_jax.train import writers
from tests.helpers import load_config


def _bits_equal(a, b) -> bool:
  fa, fb = recognition._flat(a), recognition._flat(b)  # pylint: disable=protected-access
  return fa.keys() == fb.keys() and all(
      np.array_equal(np.asarray(fa[k]).view(np.uint8), np.asarray(fb[k]).view(np.uint8))
      for k in fa)


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
      assert recognition.make_views({"image": image, "label": label, "index": index}, rng,
                                    config) is None
  for reason in ("empty", "too_long", "out_of_charset"):
    assert recognition.DROPPED[reason] == before.get(reason, 0) + 1
  text = caplog.text
  assert "record 11" in text and "record 12" in text and "record 13" in text
  config.oov = "unk"  # the other policy: unknown characters become UNK, nothing dropped
  unk = recognition.make_views({"image": image, "label": "caf\u00e9", "index": 14}, rng, config)
  assert list(unk["label"][:5]) == [cs.encode("caf", 25)[0], cs.encode("caf", 25)[1],
                                    cs.encode("caf", 25)[2], cs.unk, cs.eos]


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


@pytest.mark.parametrize("decoder", ["ctc", "attention", "transformer"])
def test_tiny_model_overfits_64_lines(decoder):
  """A tiny ViT (16x64 input, 64 tokens) + decoder learns 64 labeled lines by heart."""
  config = load_config("finetune", f"smoke,decoder={decoder}")
  config.image_height, config.image_width = 16, 64
  config.augment, config.max_len, config.batch_size, config.total_steps = False, 8, 64, 150
  config.model.update(embed_dim=64, drop_path_rate=0.0)
  config.transformer.d_model = config.attention.hidden_dim = config.attention.attention_dim = 64
  config.optim.update(base_lr=1e-2, warmup_steps=10, end_lr=1e-3, weight_decay=0.0,
                      layer_decay=1.0)
  images, labels = _short_words()
  cs = recognition.charset_from_config(config)
  mesh = sharding_lib.make_mesh(config.mesh, jax.devices()[:1])  # no collectives: faster
  s = loop.setup(config, mesh=mesh)
  state, train_step = s["state"], s["train_step"]
  batch = sharding_lib.global_batch(
      {"image": images, "label": np.stack([cs.encode(t, config.max_len) for t in labels])}, mesh)
  for _ in range(config.total_steps):
    state, m = train_step(state, batch)
  predict = recognition.make_batch_predictor(config, mesh, 64)
  ids, conf = predict(state.params, state.model_state, images)
  preds = [cs.decode(row) for row in ids]
  assert metrics.score(preds, labels).report()["accuracy"] == 100.0, (float(m["loss"]), preds)
  assert np.mean(conf) > 0.5


@pytest.fixture(scope="module")
def dig_smoke(tmp_path_factory):
  """A DiG smoke pretraining checkpoint (2 steps)."""
  workdir = str(tmp_path_factory.mktemp("dig"))
  config = load_config("dig", "smoke")
  config.total_steps, config.viz_every = 2, 0
  loop.train(config, workdir)
  return workdir


def test_init_from_dig_frozen_encoder(dig_smoke, tmp_path):
  """Decoder evaluation from a DiG checkpoint: the encoder is DiG's, bit for bit, at the end."""
  config = load_config("finetune", "smoke")
  config.init_from, config.freeze_encoder = dig_smoke, True
  config.total_steps = 4
  config.eval_every, config.checkpoint_every = 2, 4
  loop.train(config, str(tmp_path))
  dig_encoder = ckpt_lib.restore_params(dig_smoke)["params"]["encoder"]
  final = ckpt_lib.restore_params(str(tmp_path))
  assert int(final["step"]) == 4
  assert _bits_equal(final["params"]["encoder"], dig_encoder)
  assert recognition.phases(config) == [("main", ["decoder"])]
  rows = writers.read_metrics(str(tmp_path))
  assert [r["step"] for r in rows if "val_accuracy" in r] == [2, 4]
  assert all(0.0 <= r["val_accuracy"] <= 100.0 for r in rows if "val_accuracy" in r)
  assert any("train_accuracy" in r and "loss" in r for r in rows)
  assert ckpt_lib.Checkpointer(str(tmp_path / "best"), async_save=False).latest_step() in (2, 4)


def test_init_from_loads_encoder_exactly_for_full_finetuning(dig_smoke):
  config = load_config("finetune", "smoke")
  config.init_from = dig_smoke
  assert recognition.phases(config) == [("main", ["encoder", "decoder"])]
  s = loop.setup(config)
  state = recognition.load_pretrained(s["state"], config)
  assert _bits_equal(jax.device_get(state.params["encoder"]),
                     ckpt_lib.restore_params(dig_smoke)["params"]["encoder"])
  leaf = jax.tree.leaves(state.params["encoder"])[0]
  assert leaf.sharding == jax.tree.leaves(s["state"].params["encoder"])[0].sharding


def test_init_from_another_size_says_what_differs(dig_smoke):
  config = load_config("finetune", "smoke")
  config.init_from = dig_smoke
  config.model.update(embed_dim=48, depth=3)
  batch = {"image": np.zeros((2, 32, 128, 3), np.uint8),
           "label": np.zeros((2, config.max_len + 1), np.int32)}
  params = jax.eval_shape(lambda r: recognition.init_variables(config, r, batch),
                          jax.random.PRNGKey(0))["params"]
  state = state_lib.TrainState(step=0, params=params, opt_state={}, model_state={}, rng=None)
  with pytest.raises(ValueError) as e:
    recognition.load_pretrained(state, config)
  msg = str(e.value)
  assert "shape blocks_0/attn/qkv/kernel: checkpoint (32, 96) vs model (48, 144)" in msg
  assert "missing in checkpoint: blocks_2/" in msg
  assert "method=dig" in msg and "size=smoke" in msg and "embed_dim=32" in msg
