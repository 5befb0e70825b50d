"""Tests for models/vit.py: shapes, param tree, counts, position table, masking, dtypes."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslocr_jax import posembed
from sslocr_jax.models import encoders
from sslocr_jax.models import vit

SMALL = dict(embed_dim=16, depth=2, num_heads=2)  # custom CPU size


def _images(b=2, seed=0):
  return jax.random.uniform(jax.random.PRNGKey(seed), (b, 32, 128, 3), minval=-1, maxval=1)


def _init(model, images, mask=None):
  return model.init(jax.random.PRNGKey(1), images, mask)


def test_shape_and_boxed_params():
  model = vit.Encoder(**SMALL)
  x = _images()
  variables = _init(model, x)
  assert isinstance(variables["params"]["mask_token"], nn.LogicallyPartitioned)
  params = nn.unbox(variables)
  out_boxed = model.apply(variables, x)
  out = model.apply(params, x)
  assert out.shape == (2, 256, 16) and out.dtype == jnp.float32
  np.testing.assert_array_equal(out, out_boxed)
  # init also works from plain arrays' shapes under eval_shape (abstract init).
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(1), x)
  assert jax.tree.structure(nn.unbox(abstract)) == jax.tree.structure(params)


def test_param_tree_names_and_logical_axes():
  variables = _init(vit.Encoder(**SMALL), _images(1))
  p = variables["params"]
  assert set(p) == {"patch_embed", "mask_token", "blocks_0", "blocks_1"}
  assert set(p["blocks_0"]) == {"norm1", "attn", "norm2", "mlp"}
  assert set(p["blocks_0"]["attn"]) == {"qkv", "q_bias", "v_bias", "proj"}
  assert set(p["blocks_0"]["attn"]["qkv"]) == {"kernel"}
  assert set(p["blocks_0"]["mlp"]) == {"fc1", "fc2"}
  assert p["patch_embed"]["proj"]["kernel"].value.shape == (4, 4, 3, 16)
  names = {
    jax.tree_util.keystr(k): v.names
    for k, v in jax.tree_util.tree_leaves_with_path(
      p, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )
  }
  assert names["['blocks_0']['attn']['qkv']['kernel']"] == ("embed", "heads")
  assert names["['blocks_0']['attn']['proj']['kernel']"] == ("heads", "embed")
  assert names["['blocks_0']['mlp']['fc1']['kernel']"] == ("embed", "mlp")
  assert names["['blocks_0']['mlp']['fc2']['kernel']"] == ("mlp", "embed")
  assert names["['patch_embed']['proj']['kernel']"] == (None, None, None, "embed")
  assert names["['mask_token']"] == (None, None, "embed")
  assert names["['blocks_1']['norm2']['scale']"] == ("embed",)
  assert len(names) == len(jax.tree.leaves(nn.unbox(p)))  # every param is annotated


def _closed_form_count(d, depth):
  per_block = 4 * d + 3 * d * d + 2 * d + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
  return (3 * 16 * d + d) + d + depth * per_block  # = 50 D + depth (12 D^2 + 12 D)


@pytest.mark.parametrize(
  "size,expected", [("tiny", 5_345_664), ("small", 21_308_160), ("base", 37_848_064)]
)
def test_param_counts(size, expected):
  kw = vit.encoder_kwargs(size)
  shapes = jax.eval_shape(vit.Encoder(**kw).init, jax.random.PRNGKey(0), _images(1))
  n = sum(math.prod(x.shape) for x in jax.tree.leaves(nn.unbox(shapes["params"])))
  assert n == _closed_form_count(kw["embed_dim"], kw["depth"]) == expected


def test_encoder_kwargs_overrides():
  assert vit.encoder_kwargs("small", depth=2) == dict(embed_dim=384, depth=2, num_heads=6)
  with pytest.raises(ValueError):
    vit.encoder_kwargs("huge")


def test_position_table_values():
  d = 16
  table = posembed.sincos_1d(256, d)
  assert table.shape == (256, d) and table.dtype == np.float32
  for pos, j in [(0, 0), (0, 1), (1, 0), (1, 1), (7, 4), (100, 5), (255, 14), (255, 15)]:
    angle = pos / 10000 ** (2 * (j // 2) / d)
    want = math.sin(angle) if j % 2 == 0 else math.cos(angle)
    assert table[pos, j] == pytest.approx(want, abs=1e-6)


def _zero_patch_params(model, x):
  """depth-0 encoder with a patch conv that sums each patch's pixels into channel 0."""
  params = nn.unbox(_init(model, x))["params"]
  k = np.zeros(params["patch_embed"]["proj"]["kernel"].shape, np.float32)
  k[..., 0] = 1.0
  params["patch_embed"]["proj"]["kernel"] = jnp.asarray(k)
  params["mask_token"] = jnp.full_like(params["mask_token"], 3.0)
  return {"params": params}


def test_pos_embedding_added_and_row_major_tokens():
  model = vit.Encoder(embed_dim=16, depth=0, num_heads=2)
  x = jnp.zeros((1, 32, 128, 3))
  variables = _zero_patch_params(model, x)
  pos = posembed.sincos_1d(256, 16)
  np.testing.assert_allclose(model.apply(variables, x)[0], pos, atol=1e-6)
  # One lit patch at grid (row 2, col 5) -> token 2 * 32 + 5 = 69 (48 pixels of 1).
  x = x.at[0, 8:12, 20:24, :].set(1.0)
  out = np.asarray(model.apply(variables, x)[0]) - pos
  assert np.argwhere(np.abs(out) > 1e-5).tolist() == [[69, 0]]
  assert out[69, 0] == pytest.approx(48.0)


def test_mask_replaces_patch_before_pos_embedding():
  model = vit.Encoder(embed_dim=16, depth=0, num_heads=2)
  x = _images(1)
  variables = _zero_patch_params(model, x)
  mask = jnp.zeros((1, 256), bool).at[0, 10].set(True)
  out = model.apply(variables, x, mask)[0]
  np.testing.assert_allclose(out[10], 3.0 + posembed.sincos_1d(256, 16)[10], atol=1e-6)


def test_masking_semantics():
  model = vit.Encoder(**SMALL)
  x1, x2 = _images(2, seed=0), _images(2, seed=5)
  variables = _init(model, x1)
  all_masked = jnp.ones((2, 256), bool)
  np.testing.assert_allclose(
    model.apply(variables, x1, all_masked), model.apply(variables, x2, all_masked), atol=1e-6
  )
  none_masked = jnp.zeros((2, 256), bool)
  np.testing.assert_allclose(
    model.apply(variables, x1, None), model.apply(variables, x1, none_masked), atol=1e-6
  )


def _numpy_reference(params, images, num_heads):
  """Literal float64 port of the official PyTorch forward (NCHW conv, qkv layout)."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  x = np.transpose(np.asarray(images, np.float64), (0, 3, 1, 2))  # NCHW
  w = np.transpose(p["patch_embed"]["proj"]["kernel"], (3, 2, 0, 1))  # OIHW
  b, _, hgt, wid = x.shape
  patches = x.reshape(b, 3, hgt // 4, 4, wid // 4, 4)
  x = np.einsum("bchpwq,ocpq->bohw", patches, w) + p["patch_embed"]["proj"]["bias"][:, None, None]
  x = x.reshape(b, x.shape[1], -1).transpose(0, 2, 1)  # flatten(2).transpose(1, 2)
  n, d = x.shape[1:]
  x = x + posembed.sincos_1d(n, d).astype(np.float64)

  def ln(y, q):
    mu, var = y.mean(-1, keepdims=True), y.var(-1, keepdims=True)
    return (y - mu) / np.sqrt(var + 1e-6) * q["scale"] + q["bias"]

  gelu = np.vectorize(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))
  i = 0
  while f"blocks_{i}" in p:
    blk = p[f"blocks_{i}"]
    a = blk["attn"]
    y = ln(x, blk["norm1"])
    bias = np.concatenate([a["q_bias"], np.zeros(d), a["v_bias"]])
    qkv = (y @ a["qkv"]["kernel"] + bias).reshape(b, n, 3, num_heads, -1).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * (d // num_heads) ** -0.5, qkv[1], qkv[2]
    logit = q @ k.transpose(0, 1, 3, 2)
    attn = np.exp(logit - logit.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    y = (attn @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
    x = x + y @ a["proj"]["kernel"] + a["proj"]["bias"]
    y = ln(x, blk["norm2"])
    m = blk["mlp"]
    y = gelu(y @ m["fc1"]["kernel"] + m["fc1"]["bias"]) @ m["fc2"]["kernel"] + m["fc2"]["bias"]
    x = x + y
    i += 1
  return x


def test_matches_pytorch_formula_reference():
  model = vit.Encoder(embed_dim=16, depth=1, num_heads=2)
  x = _images(1)
  params = nn.unbox(_init(model, x))["params"]
  # Random non-zero biases / norms so every param matters.
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(3), len(leaves))
  params = jax.tree.unflatten(
    treedef, [l + 0.1 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)]
  )
  got = model.apply({"params": params}, x)
  want = _numpy_reference(params, x, num_heads=2)
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=1e-5)


def test_drop_path():
  x = _images()
  model = vit.Encoder(**SMALL, drop_path_rate=0.5)
  variables = _init(model, x)
  ref = vit.Encoder(**SMALL).apply(variables, x)
  np.testing.assert_array_equal(model.apply(variables, x, train=False), ref)
  rngs = {"dropout": jax.random.PRNGKey(7)}
  trained = model.apply(variables, x, train=True, rngs=rngs)
  assert not np.allclose(trained, ref)
  np.testing.assert_array_equal(trained, model.apply(variables, x, train=True, rngs=rngs))


def test_no_dropout_on_the_position_table_unless_asked():
  """The release's fine-tuned encoder has no `pos_drop`: with depth 0 the output is patch
  embedding + table, untouched by dropout in training unless `pos_dropout=True`."""
  x = _images()
  kw = dict(embed_dim=32, depth=0, num_heads=2, dropout_rate=0.5)
  model = vit.Encoder(**kw)
  variables = _init(model, x)
  rngs = {"dropout": jax.random.PRNGKey(3)}
  ref = model.apply(variables, x, train=False)
  np.testing.assert_array_equal(model.apply(variables, x, train=True, rngs=rngs), ref)
  dropped = vit.Encoder(**kw, pos_dropout=True).apply(variables, x, train=True, rngs=rngs)
  assert 0.3 < float(jnp.mean(dropped == 0)) < 0.7


def _remat_policies(jaxpr) -> list:
  """The `policy` of every remat equation of a jaxpr, nested ones included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name.startswith(("remat", "checkpoint")):
      found.append(eqn.params.get("policy"))
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else [value]:
        sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
        if hasattr(sub, "eqns"):
          found += _remat_policies(sub)
  return found


def test_remat_policies_wrap_each_block_and_keep_the_gradients():
  """Every policy wraps each block in a remat with its checkpoint policy (traced, not run);
  save_dots computes the gradients of no remat (the same params tree)."""
  x, kw = _images(1), dict(SMALL, depth=2, drop_path_rate=0.2)
  plain = vit.Encoder(**kw)
  variables = nn.unbox(_init(plain, x))
  loss = lambda m: (
    lambda v: m.apply(v, x, train=True, rngs={"dropout": jax.random.PRNGKey(0)}).sum()
  )
  assert not _remat_policies(jax.make_jaxpr(loss(plain))(variables).jaxpr)
  for remat in ("full", "save_dots", True):
    model = vit.Encoder(**kw, remat=remat)
    policy = encoders.REMAT_POLICIES[encoders.remat_name(remat)]
    assert _remat_policies(jax.make_jaxpr(loss(model))(variables).jaxpr) == [policy] * 2
  model = vit.Encoder(**kw, remat="save_dots")
  assert jax.tree.structure(nn.unbox(_init(model, x))) == jax.tree.structure(variables)
  grads = jax.jit(jax.grad(loss(model)))(variables)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
    grads,
    jax.jit(jax.grad(loss(plain)))(variables),
  )


def test_remat_names():
  assert [encoders.remat_name(r) for r in (False, True, "none", "save_dots")] == [
    "none",
    "full",
    "none",
    "save_dots",
  ]
  with pytest.raises(ValueError, match="remat='dots'.*none, full, save_dots"):
    encoders.remat_name("dots")


def test_bfloat16_compute_float32_params():
  x = _images()
  model16 = vit.Encoder(**SMALL, dtype=jnp.bfloat16)
  variables = _init(model16, x)
  assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(nn.unbox(variables)))
  out16 = model16.apply(variables, x, jnp.zeros((2, 256), bool).at[:, :50].set(True))
  out32 = vit.Encoder(**SMALL).apply(variables, x, jnp.zeros((2, 256), bool).at[:, :50].set(True))
  assert out16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out16, np.float32), out32, atol=0.1, rtol=0.05)


def test_attention_forms_agree(monkeypatch):
  # The CPU form (head-major, normalised after p.v), jax.nn.dot_product_attention (the
  # accelerators' form) and the attention-dropout form at a rate that drops nothing must give
  # the same tokens and the same parameter gradients.
  x = _images(2)
  variables = nn.unbox(_init(vit.Encoder(embed_dim=16, depth=1, num_heads=2), x))

  def run(fused, attn_dropout_rate=0.0):
    monkeypatch.setattr(vit, "_fused_attention_by_default", lambda: fused)
    model = vit.Encoder(embed_dim=16, depth=1, num_heads=2, attn_dropout_rate=attn_dropout_rate)
    rngs = {"dropout": jax.random.PRNGKey(0)}
    f = lambda p: model.apply({"params": p}, x, train=True, rngs=rngs)
    grads = jax.grad(lambda p: jnp.sum(jnp.sin(f(p))))(variables["params"])
    return f(variables["params"]), grads

  assert not vit._fused_attention_by_default()  # the tests' CPU devices: the explicit form
  explicit, g_explicit = run(False)
  for other, g_other in (run(True), run(False, attn_dropout_rate=1e-9)):
    np.testing.assert_allclose(np.asarray(other), np.asarray(explicit), atol=2e-6, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g_other), jax.tree.leaves(g_explicit)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=1e-5)
  # The config field picks a form regardless of the platform: "xla" is the accelerators' form.
  by_field = {
    impl: vit.Encoder(embed_dim=16, depth=1, num_heads=2, attention=impl).apply(variables, x)
    for impl in ("explicit", "xla")
  }
  np.testing.assert_allclose(
    np.asarray(by_field["xla"]), np.asarray(by_field["explicit"]), atol=2e-6, rtol=1e-6
  )
  with pytest.raises(ValueError, match="model.attention='flash'"):
    vit.Encoder(embed_dim=16, depth=1, num_heads=2, attention="flash").apply(variables, x)


def test_exact_gelu_is_torch_formula_and_jax_gelu():
  x = jnp.linspace(-9.0, 9.0, 2001, dtype=jnp.float32)
  want = np.asarray([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in np.asarray(x, float)])
  np.testing.assert_allclose(np.asarray(vit.exact_gelu(x)), want, atol=1e-6, rtol=1e-6)
  np.testing.assert_allclose(
    np.asarray(vit.exact_gelu(x)), np.asarray(nn.gelu(x, approximate=False)), atol=1e-6
  )
  grad = jax.vmap(jax.grad(vit.exact_gelu))(x)
  want_grad = jax.vmap(jax.grad(lambda v: nn.gelu(v, approximate=False)))(x)
  np.testing.assert_allclose(np.asarray(grad), np.asarray(want_grad), atol=1e-6)


def test_dtype_auto_is_bfloat16_on_accelerators_float32_on_cpu(monkeypatch):
  import ml_collections  # pylint: disable=g-import-not-at-top

  config = lambda d: ml_collections.ConfigDict({"dtype": d})
  assert encoders.compute_dtype(config("auto")) == jnp.float32  # the tests' CPU devices
  assert encoders.compute_dtype(config("bfloat16")) == jnp.bfloat16
  for platform, want in (("gpu", jnp.bfloat16), ("tpu", jnp.bfloat16), ("cpu", jnp.float32)):
    monkeypatch.setattr(jax, "devices", lambda p=platform: [type("D", (), {"platform": p})()])
    assert encoders.compute_dtype(config("auto")) == want
