"""Tests for models/resnet.py: frame counts, param tree, TPS, BatchNorm train/eval, registry."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sslocr_jax.models import encoders
from sslocr_jax.models import resnet
from tests.helpers import fill_like

TINY = dict(channels=32, blocks=(1, 1, 1, 1), lstm_hidden=8, lstm_layers=2, tps_channels=16)


def _images(b=2, h=32, w=128, seed=0):
  return jax.random.uniform(jax.random.PRNGKey(seed), (b, h, w, 3), minval=-1, maxval=1)


def _init(model, x):
  return jax.jit(model.init)(jax.random.PRNGKey(0), x)


def _apply(model, variables, x, **kw):
  return jax.jit(lambda v, x: model.apply(v, x, **kw))(variables, x)


def _names(tree):
  return {
    jax.tree_util.keystr(k): v.names
    for k, v in jax.tree_util.tree_leaves_with_path(
      tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )
  }


@pytest.mark.parametrize(
  "width,layers,frames,dim", [(128, 2, 33, 8), (100, 2, 26, 8), (128, 0, 33, 32)]
)
def test_output_shapes(width, layers, frames, dim):
  model = resnet.Encoder(**{**TINY, "lstm_layers": layers})
  x = _images(w=width)
  shapes = jax.eval_shape(lambda x: model.apply(model.init(jax.random.PRNGKey(0), x), x), x)
  assert shapes.shape == (2, frames, dim) == (2, resnet.num_frames(width), model.features_dim)


@pytest.fixture(scope="module")
def tiny():
  """A tiny TPS + ResNet + 2 BiLSTM encoder, its variables and one jitted train pass.

  The TPS variables come from its real init (identity at start); the rest are `fill_like`
  values on the init's abstract tree (a jitted init of the whole encoder costs ~20 s of this
  CPU compiling threefry; the real init is exercised by the SeqCLR smoke run)."""
  model = resnet.Encoder(**TINY, tps=True)
  x = _images(4) * 2.0 + 0.5
  variables = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), x))
  variables = fill_like(variables)
  tps = model.tps and resnet.TPS(model.num_fiducials, model.tps_channels)
  tps_vars = jax.jit(lambda x: tps.init(jax.random.PRNGKey(1), x, train=False))(x)
  for col in ("params", "batch_stats"):
    variables[col] = {**variables[col], "tps": tps_vars[col]}
  train = _apply(
    model,
    variables,
    x,
    train=True,
    mutable=["batch_stats", "intermediates"],
    capture_intermediates=lambda m, _: m.name in ("conv0_1", "rectified"),
  )
  return model, x, variables, train


def test_forward_and_param_tree(tiny):
  model, x, variables, (out, _) = tiny
  assert out.shape == (4, 33, 8) and np.isfinite(out).all()
  p = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"]  # boxed, abstract
  assert set(p) == {"tps", "cnn", "lstm_0", "lstm_1"}
  assert {"conv0_1", "bn0_1", "conv0_2", "layer1_0", "conv1", "conv4_1", "conv4_2", "bn4_2"} <= set(
    p["cnn"]
  )
  assert set(p["cnn"]["layer1_0"]) == {
    "conv1",
    "bn1",
    "conv2",
    "bn2",
    "downsample_conv",
    "downsample_bn",
  }
  assert "downsample_conv" not in p["cnn"]["layer4_0"]  # width unchanged in stage 4
  assert set(p["lstm_0"]) == {"forward", "backward", "linear"}
  assert set(p["lstm_0"]["forward"]) == {"ii", "if", "ig", "io", "hi", "hf", "hg", "ho"}
  assert set(p["tps"]) >= {"loc_conv_0", "loc_bn_3", "loc_fc1", "loc_fc2"}
  names = _names(p)
  assert names["['cnn']['conv0_1']['kernel']"] == (None, None, "conv_in", "conv_out")
  assert names["['cnn']['bn0_1']['scale']"] == ("conv_out",)
  assert names["['lstm_0']['forward']['ii']['kernel']"] == ("embed", "mlp")
  assert names["['lstm_0']['linear']['kernel']"] == ("mlp", "embed")
  assert names["['tps']['loc_fc1']['kernel']"] == ("embed", "mlp")
  assert len(names) == len(jax.tree.leaves(nn.unbox(p)))  # every param is annotated
  assert set(variables["batch_stats"]) == {"tps", "cnn"}
  assert set(variables["batch_stats"]["cnn"]["bn0_1"]) == {"mean", "var"}


def test_paper_size_param_count():
  """Paper-size ResNet (512) + 2 BiLSTM (256): 44,264,480 CNN + 2,888,192 LSTM params."""
  x = _images(1)
  shapes = jax.eval_shape(resnet.Encoder().init, jax.random.PRNGKey(0), x)
  p = nn.unbox(shapes["params"])
  count = lambda t: sum(math.prod(a.shape) for a in jax.tree.leaves(t))
  # BiLSTM(in, 256) + Linear(512, 256); flax has one bias per gate (PyTorch two).
  lstm = lambda d_in: 2 * (4 * 256 * (d_in + 256) + 4 * 256) + 512 * 256 + 256
  assert count(p["lstm_0"]) + count(p["lstm_1"]) == lstm(512) + lstm(256) == 2_888_192
  assert count(p["cnn"]) == 44_264_480


def test_tps_identity_at_init(tiny):
  _, x, _, (_, state) = tiny
  rectified = state["intermediates"]["rectified"][0]
  np.testing.assert_allclose(rectified, x, atol=1e-4)
  # the grid matrix maps the base fiducials onto the output's pixel centres
  grid = resnet.tps_grid_matrix(20, 4, 8) @ resnet.fiducials(20)
  centres = np.stack(
    np.meshgrid((np.arange(8) * 2 + 1) / 8 - 1, (np.arange(4) * 2 + 1) / 4 - 1), axis=2
  ).reshape(-1, 2)
  np.testing.assert_allclose(grid, centres, atol=1e-4)


def test_grid_sample_bilinear_and_border():
  img = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(1, 3, 4, 2)
  # half a pixel to the right of pixel (1, 1) (x in pixels = 1.5), and far outside (border)
  x_pix, y_pix = jnp.array([1.5, 10.0]), jnp.array([1.0, -5.0])
  grid = jnp.stack([(2 * x_pix + 1) / 4 - 1, (2 * y_pix + 1) / 3 - 1], -1).reshape(1, 1, 2, 2)
  out = jax.jit(resnet.grid_sample)(img, grid)[0, 0]
  np.testing.assert_allclose(out[0], (img[0, 1, 1] + img[0, 1, 2]) / 2)
  np.testing.assert_allclose(out[1], img[0, 0, 3])


def test_batchnorm_updates_in_training_and_is_frozen_in_eval(tiny):
  model, x, variables, (out, state) = tiny
  with pytest.raises(Exception):  # training mode must be allowed to write batch_stats
    jax.eval_shape(lambda v: model.apply(v, x, train=True), variables)
  old, new = variables["batch_stats"], state["batch_stats"]
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), old, new)
  assert all(jax.tree.leaves(changed))  # every BN's statistics moved
  # momentum 0.9: new mean = 0.9 * 0 + 0.1 * batch mean of the first conv's output
  conv = state["intermediates"]["cnn"]["conv0_1"]["__call__"][0]
  np.testing.assert_allclose(
    new["cnn"]["bn0_1"]["mean"], 0.1 * conv.mean((0, 1, 2)), rtol=1e-4, atol=1e-6
  )
  # Eval: running statistics are used and left unchanged; outputs are per example (changing
  # the other examples of the batch changes nothing).
  trained = {"params": variables["params"], "batch_stats": new}
  evaluate = jax.jit(lambda x: model.apply(trained, x, train=False, mutable=["batch_stats"]))
  eval_out, same = evaluate(x)
  jax.tree.map(np.testing.assert_array_equal, same["batch_stats"], new)
  other_out, _ = evaluate(x.at[1:].set(-x[1:]))
  np.testing.assert_allclose(other_out[0], eval_out[0], rtol=1e-5, atol=1e-6)
  assert not np.allclose(eval_out, out)


def test_registry_builds_resnet_from_config():
  config = ml_collections.ConfigDict(
    dict(
      model=dict(name="resnet", **TINY, tps=False, num_fiducials=20),
      dtype="float32",
      image_height=32,
      image_width=128,
    )
  )
  enc, grid_h = encoders.build(config)
  assert grid_h == 1 and isinstance(enc, resnet.Encoder)
  assert enc.channels == 32 and enc.blocks == (1, 1, 1, 1) and enc.lstm_layers == 2
  x = _images(1)
  out = jax.eval_shape(lambda x: enc.apply(enc.init(jax.random.PRNGKey(0), x), x, None), x)
  assert out.shape == (1, 33, 8)


def test_bfloat16_compute():
  model = resnet.Encoder(**TINY, tps=True, dtype=jnp.bfloat16)
  x = _images()
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(nn.unbox(variables)))
  out, _ = jax.eval_shape(
    lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]), variables
  )
  assert out.dtype == jnp.bfloat16


def test_remat_wraps_each_basic_block():
  """Traced only (the ViT test checks that a remat policy keeps the gradients)."""
  x = _images(1)
  model = resnet.Encoder(**{**TINY, "lstm_layers": 0}, remat="full")
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]))(
    variables
  ).jaxpr
  assert sum(e.primitive.name.startswith("remat") for e in jaxpr.eqns) == 4  # blocks (1, 1, 1, 1)
