"""Tests for models/heads.py: BN-MLPs (MoCo v3 / DiG) and the SimMIM pixel head."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sslocr_jax.models import heads


def _x(shape, seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), shape) * 2.0 + 1.0


def _names(tree):
  return {
    jax.tree_util.keystr(k): v.names
    for k, v in jax.tree_util.tree_leaves_with_path(
      tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )
  }


def test_mlp_tree_and_shapes():
  mlp = heads.MLP(num_layers=3, hidden_dim=32, out_dim=8)
  x = _x((16, 12))
  variables = mlp.init(jax.random.PRNGKey(0), x, train=False)
  p = nn.unbox(variables["params"])
  assert set(p) == {"linear_0", "bn_0", "linear_1", "bn_1", "linear_2"}  # no affine in bn_2
  assert all(set(p[f"linear_{l}"]) == {"kernel"} for l in range(3))  # no biases
  assert set(variables["batch_stats"]) == {"bn_0", "bn_1", "bn_2"}
  assert p["linear_1"]["kernel"].shape == (32, 32)
  out = mlp.apply(variables, x, train=False)
  assert out.shape == (16, 8)
  names = _names(variables["params"])
  assert names["['linear_0']['kernel']"] == ("embed", "mlp")
  assert names["['linear_1']['kernel']"] == (None, "mlp")
  assert names["['linear_2']['kernel']"] == ("mlp", "embed")
  assert names["['bn_0']['scale']"] == ("mlp",)
  # Leading axes are all batch axes: [B, L, D] works like [B*L, D].
  y = mlp.apply(variables, x.reshape(4, 4, 12), train=True, mutable=["batch_stats"])[0]
  z = mlp.apply(variables, x, train=True, mutable=["batch_stats"])[0]
  np.testing.assert_allclose(y.reshape(16, 8), z, atol=1e-5)


def test_mlp_last_bn_options():
  x = _x((8, 6))
  affine = heads.MLP(2, 16, 4, last_bn_affine=True, use_bias=True)
  p = nn.unbox(affine.init(jax.random.PRNGKey(0), x, train=False)["params"])
  assert set(p["bn_1"]) == {"scale", "bias"} and set(p["linear_0"]) == {"kernel", "bias"}
  no_bn = heads.MLP(2, 16, 4, last_bn=False)
  v = no_bn.init(jax.random.PRNGKey(0), x, train=False)
  assert set(v["batch_stats"]) == {"bn_0"} and "bn_1" not in v["params"]


def test_batchnorm_stats_train_vs_eval():
  mlp = heads.MLP(2, 16, 4)
  x = _x((32, 6))
  variables = mlp.init(jax.random.PRNGKey(0), x, train=False)
  out, new = mlp.apply(variables, x, train=True, mutable=["batch_stats"])
  # Train mode normalizes with batch statistics: last BN (no affine) -> mean 0, var 1.
  np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(out.var(0), 1.0, atol=1e-3)
  old_mean = variables["batch_stats"]["bn_1"]["mean"]
  new_mean = new["batch_stats"]["bn_1"]["mean"]
  assert not np.allclose(old_mean, new_mean)
  # PyTorch momentum 0.1 == flax momentum 0.9: new = 0.9 old + 0.1 batch_mean.
  h = mlp.apply(
    variables,
    x,
    train=True,
    mutable=["batch_stats", "intermediates"],
    capture_intermediates=lambda m, _: m.name == "linear_1",
  )[1]
  batch_mean = h["intermediates"]["linear_1"]["__call__"][0].mean(0)
  np.testing.assert_allclose(new_mean, 0.9 * old_mean + 0.1 * batch_mean, atol=1e-5)
  # Eval mode uses and keeps the running statistics.
  _, same = mlp.apply({**variables, **new}, x, train=False, mutable=["batch_stats"])
  jax.tree.map(np.testing.assert_array_equal, same["batch_stats"], new["batch_stats"])


def test_dig_mlps():
  d = 24
  tokens = _x((2, 256, d))
  pp = heads.pix_projector(d, hidden_dim=16)
  v = pp.init(jax.random.PRNGKey(0), tokens, train=False)
  assert pp.apply(v, tokens, train=False).shape == (2, 256, d)
  assert "bn_2" in v["batch_stats"] and "bn_2" not in v["params"]

  proj, pred = heads.projector(hidden_dim=32, out_dim=8), heads.predictor(hidden_dim=32, out_dim=8)
  inst = _x((8, d))
  vp = proj.init(jax.random.PRNGKey(0), inst, train=False)
  q = proj.apply(vp, inst, train=False)
  vq = pred.init(jax.random.PRNGKey(1), q, train=False)
  assert pred.apply(vq, q, train=False).shape == (8, 8)
  assert "bn_1" in vq["batch_stats"] and "bn_1" not in vq["params"]  # DiG release: last_bn=True


def test_dig_mlp_param_counts_full_size():
  d, h, o = 384, 4096, 256
  count = lambda m, x: sum(
    math.prod(l.shape)
    for l in jax.tree.leaves(
      nn.unbox(jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), x, train=False))["params"])
    )
  )
  assert count(heads.projector(), jnp.zeros((2, d))) == d * h + 2 * h + h * h + 2 * h + h * o
  assert count(heads.predictor(), jnp.zeros((2, o))) == o * h + 2 * h + h * o
  assert (
    count(heads.pix_projector(d), jnp.zeros((2, d)))
    == d * 512 + 2 * 512 + 512 * 512 + 2 * 512 + 512 * d
  )


def test_mim_head():
  head = heads.MimHead(embed_dim=24)
  x = _x((2, 256, 24))
  v = head.init(jax.random.PRNGKey(0), x)
  p = nn.unbox(v["params"])
  assert set(p) == {"linear_0", "linear_1", "norm", "linear_2"}
  assert set(p["linear_0"]) == {"kernel"} and set(p["linear_1"]) == {"kernel"}
  assert p["linear_0"]["kernel"].shape == (24, 192) and p["linear_2"]["kernel"].shape == (192, 48)
  assert set(p["linear_2"]) == {"kernel", "bias"}
  assert head.apply(v, x).shape == (2, 256, 48)
  out16 = heads.MimHead(dtype=jnp.bfloat16).apply(v, x)
  assert out16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out16, np.float32), head.apply(v, x), atol=0.1, rtol=0.05)
