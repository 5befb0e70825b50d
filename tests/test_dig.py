"""DiG objective pieces against hand-computed / numpy references."""

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sslocr_jax.methods import dig
from tests.helpers import fill_like
from tests.helpers import load_config


def test_mim_loss_counts_only_masked_patches():
  pred = jnp.zeros((1, 4, 2))
  target = jnp.array([[[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [100.0, 100.0]]])
  mask = jnp.array([[True, False, True, False]])
  # masked patches 0 and 2: squared errors 1 and 9 -> mean 5; the unmasked 100s never count
  np.testing.assert_allclose(dig.mim_loss(pred, target, mask), 5.0)


def test_mim_target_pixels_centred_and_normalized():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(2, 32, 128, 3), dtype=np.uint8)
  images[0, :4, :4] = 77  # patch 0 of image 0 is flat
  pixels = np.asarray(dig.mim_target(jnp.asarray(images), "pixels"))
  np.testing.assert_allclose(pixels[1, 33].reshape(4, 4, 3), images[1, 4:8, 4:8] / 255.0)
  centred = np.asarray(dig.mim_target(jnp.asarray(images), "centred"))
  np.testing.assert_allclose(centred, pixels - pixels.mean(-1, keepdims=True), atol=1e-6)
  np.testing.assert_allclose(centred[0, 0], 0.0, atol=1e-7)  # a flat patch asks for nothing
  norm = np.asarray(dig.mim_target(jnp.asarray(images), "normalized"))
  want = (pixels - pixels.mean(-1, keepdims=True)) / np.sqrt(pixels.var(-1, ddof=1) + 1e-6)[
    ..., None
  ]
  np.testing.assert_allclose(norm, want, rtol=1e-4, atol=1e-5)
  # the same image brighter by a constant: the centred target does not change
  brighter = np.asarray(dig.mim_target(jnp.asarray(images[1:] // 2 + 100), "centred"))
  half = np.asarray(dig.mim_target(jnp.asarray(images[1:] // 2), "centred"))
  np.testing.assert_allclose(brighter, half, atol=1e-6)
  with pytest.raises(ValueError, match="mim_target"):
    dig.mim_target(jnp.asarray(images), "edges")


def _info_nce_numpy(q, k, t):
  q = q / np.linalg.norm(q, axis=1, keepdims=True)
  k = k / np.linalg.norm(k, axis=1, keepdims=True)
  logits = q @ k.T / t
  logits -= logits.max(axis=1, keepdims=True)
  logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
  return -np.mean(np.diag(logp)) * 2 * t


def test_info_nce_matches_numpy_reference():
  rng = np.random.default_rng(0)
  q, k = rng.normal(size=(12, 8)), rng.normal(size=(12, 8))
  np.testing.assert_allclose(
    dig.info_nce(jnp.asarray(q), jnp.asarray(k), 0.2), _info_nce_numpy(q, k, 0.2), rtol=1e-5
  )


def test_info_nce_gathers_only_the_keys():
  """q, k split by rows over 8 devices: the loss and its gradient all-gather the keys (the
  negatives) and nothing else; the positive term is row-wise, so no logits move."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("b",))
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("b"))
  rng = np.random.default_rng(0)
  q, k = (
    jax.device_put(jnp.asarray(rng.normal(size=(64, 16)), jnp.float32), rows) for _ in range(2)
  )
  hlo = jax.jit(jax.grad(lambda q, k: dig.info_nce(q, k, 0.2))).lower(q, k).compile().as_text()
  assert re.findall(r"= (\S+) all-gather\(", hlo) == ["f32[64,16]{1,0}"]
  assert "all-to-all(" not in hlo and "collective-permute(" not in hlo


def test_info_nce_is_low_for_aligned_pairs():
  q = jnp.eye(8) * 5
  assert float(dig.info_nce(q, q, 0.2)) < 0.05 < float(dig.info_nce(q, jnp.roll(q, 1, 0), 0.2))


def test_windows_average_8x8_token_blocks():
  tokens = jnp.arange(2 * 256 * 3, dtype=jnp.float32).reshape(2, 256, 3)
  out = dig.windows(tokens, grid_h=8, num_windows=4)
  assert out.shape == (8, 3)
  grid = np.asarray(tokens).reshape(2, 8, 32, 3)
  for b in range(2):
    for w in range(4):
      np.testing.assert_allclose(out[b * 4 + w], grid[b, :, 8 * w : 8 * (w + 1)].mean(axis=(0, 1)))


def test_patchify_layout_and_inverse():
  images = np.random.default_rng(0).integers(0, 256, (2, 32, 128, 3), dtype=np.uint8)
  patches = dig.patchify(jnp.asarray(images))
  assert patches.shape == (2, 256, 48)
  # token = row * 32 + col; inside a patch (p1 p2 c)
  np.testing.assert_allclose(
    patches[1, 2 * 32 + 5].reshape(4, 4, 3), images[1, 8:12, 20:24] / 255.0, rtol=1e-6
  )
  np.testing.assert_allclose(dig.unpatchify(patches, 32, 128), images / 255.0, rtol=1e-6)


def test_momentum_schedule_and_update():
  config = ml_collections.ConfigDict(dict(momentum=0.99, total_steps=100))
  np.testing.assert_allclose(dig.momentum_at(0, config), 0.99, rtol=1e-6)
  np.testing.assert_allclose(dig.momentum_at(50, config), 0.995, rtol=1e-6)
  np.testing.assert_allclose(dig.momentum_at(100, config), 1.0, rtol=1e-6)
  params = {n: {"w": jnp.full((2,), 1.0)} for n in dig.MOMENTUM_NETS}
  ema = {n: {"w": jnp.zeros((2,))} for n in dig.MOMENTUM_NETS}
  new = dig.after_update(params, {"ema": ema, "batch_stats": {}}, 0, config)
  for n in dig.MOMENTUM_NETS:
    np.testing.assert_allclose(new["ema"][n]["w"], 0.01, rtol=1e-5)


def test_make_views_shapes_and_mask_ratio():
  config = ml_collections.ConfigDict(dict(image_height=32, image_width=128, mask_ratio=0.7))
  image = np.random.default_rng(0).integers(0, 256, (40, 200, 3), dtype=np.uint8)
  views = dig.make_views({"image": image, "label": "x"}, np.random.default_rng(1), config)
  assert views["image1"].shape == views["image2"].shape == (32, 128, 3)
  assert views["image1"].dtype == np.uint8 and views["mask"].dtype == bool
  assert views["mask"].sum() == 179


def test_pair_interleaves_and_unpair_inverts():
  a, b = jnp.arange(6).reshape(3, 2), 10 + jnp.arange(6).reshape(3, 2)
  np.testing.assert_array_equal(dig.pair(a, b)[:, 0], [0, 10, 2, 12, 4, 14])
  a2, b2 = dig.unpair(dig.pair(a, b))
  np.testing.assert_array_equal(a2, a)
  np.testing.assert_array_equal(b2, b)


def _tiny_loss_and_grads():
  """(config, batch, variables, value_and_grad of the DiG smoke loss): concrete weights filled
  without compiling an init (helpers.fill_like); nothing compiled here."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  config = load_config("dig", "smoke")
  rng = np.random.default_rng(0)
  batch = {
    "image1": jnp.asarray(rng.integers(0, 256, (4, 32, 128, 3), dtype=np.uint8)),
    "image2": jnp.asarray(rng.integers(0, 256, (4, 32, 128, 3), dtype=np.uint8)),
    "mask": jnp.asarray(
      np.stack([np.random.default_rng(i).permutation(256) < 179 for i in range(4)])
    ),
  }
  variables = fill_like(
    nn.unbox(jax.eval_shape(lambda r: dig.init_variables(config, r, batch), jax.random.PRNGKey(0)))
  )

  def run():
    f = lambda p: dig.loss_fn(
      p, variables["model_state"], batch, jax.random.PRNGKey(1), step=0, phase="main", config=config
    )
    return jax.jit(jax.value_and_grad(f, has_aux=True))(variables["params"])

  return run


def test_loss_and_grads_finite_and_paired_views_give_the_concatenated_losses(monkeypatch):
  """On a tiny model the loss is MIM + 0.1 contrastive, every BatchNorm reports statistics and
  the grads are finite. The per-device view layout (`pair`) changes only the order of rows in
  the encoder, BatchNorm and windows: losses, grads and BN statistics equal the concatenated
  layout's. (One test: the same compiled loss serves both checks.)"""
  run = _tiny_loss_and_grads()
  paired = run()
  (loss, (metrics, state)), grads = paired
  assert np.isfinite(float(loss))
  np.testing.assert_allclose(
    loss, metrics["mim_loss"] + 0.1 * metrics["contrastive_loss"], rtol=1e-5
  )
  assert set(state["batch_stats"]) == {
    "pix_projector",
    "projector",
    "predictor",
    "pix_projector_m",
    "projector_m",
  }
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))

  monkeypatch.setattr(dig, "pair", lambda a, b: jnp.concatenate([a, b]))
  monkeypatch.setattr(dig, "unpair", lambda x: tuple(jnp.split(x, 2)))
  concatenated = run()
  for a, b in zip(jax.tree.leaves(paired), jax.tree.leaves(concatenated)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_windows_any_count_is_adaptive_pooling():
  """num_windows need not divide the 32-column grid: windows are PyTorch's adaptive average
  pooling (overlapping when needed), here 5 and 7 windows of a 2 x 32 grid."""
  tokens = jnp.asarray(np.random.default_rng(0).normal(size=(2, 2 * 32, 3)), jnp.float32)
  cols = np.asarray(tokens).reshape(2, 2, 32, 3).mean(axis=1)  # [B, 32, D]
  for w in (5, 7, 32, 1):
    out = np.asarray(dig.windows(tokens, grid_h=2, num_windows=w)).reshape(2, w, 3)
    for i in range(w):
      lo, hi = (i * 32) // w, -((-(i + 1) * 32) // w)
      np.testing.assert_allclose(out[:, i], cols[:, lo:hi].mean(axis=1), rtol=1e-5, atol=1e-6)
  with np.testing.assert_raises(ValueError):
    dig.windows(tokens, grid_h=2, num_windows=33)


def _arm_batch(mask_seed):
  rng = np.random.default_rng(0)
  return {
    "image1": jnp.asarray(rng.integers(0, 256, (4, 32, 128, 3), dtype=np.uint8)),
    "image2": jnp.asarray(rng.integers(0, 256, (4, 32, 128, 3), dtype=np.uint8)),
    "mask": jnp.asarray(
      np.stack([np.random.default_rng(mask_seed + i).permutation(256) < 179 for i in range(4)])
    ),
  }


def test_contrastive_and_mim_arms_are_the_release_ones():
  """branches=contrastive (use_pixel_target=False): no MIM head, no pix projector, and view 1 is
  not masked (the loss does not depend on the mask); branches=mim: no contrastive networks."""
  import flax.linen as nn

  config = load_config("dig", "smoke")
  config.branches = "contrastive"
  variables = fill_like(
    nn.unbox(
      jax.eval_shape(lambda r: dig.init_variables(config, r, _arm_batch(0)), jax.random.PRNGKey(0))
    )
  )
  assert set(variables["params"]) == {"encoder", "projector", "predictor"}
  assert set(variables["model_state"]["ema"]) == {"encoder", "projector"}
  assert set(variables["model_state"]["batch_stats"]) == {"projector", "predictor", "projector_m"}
  assert dig.phases(config) == [("main", ["encoder", "projector", "predictor"])]

  @jax.jit
  def loss(batch):
    return dig.loss_fn(
      variables["params"],
      variables["model_state"],
      batch,
      jax.random.PRNGKey(1),
      step=0,
      phase="main",
      config=config,
    )[0]

  l0, l1 = float(loss(_arm_batch(0))), float(loss(_arm_batch(100)))
  assert np.isfinite(l0) and l0 == l1  # another mask, the same loss: no mask is applied
  no_mask = dict(_arm_batch(0), mask=jnp.zeros((4, 256), bool))
  assert float(loss(no_mask)) == l0
  ema = dig.after_update(variables["params"], variables["model_state"], 0, config)["ema"]
  assert set(ema) == {"encoder", "projector"}
  grid = dig.visualize(
    variables["params"], variables["model_state"], _arm_batch(0), None, config, num_images=2
  )["dig_views"]  # the two views, no reconstruction row
  batch = _arm_batch(0)
  assert grid.shape == (2 * (32 + 2), 2 * (128 + 2), 3) and grid.dtype == np.uint8
  np.testing.assert_array_equal(grid[:32, :128], batch["image1"][0])
  np.testing.assert_array_equal(grid[:32, 130:258], batch["image2"][0])

  config.branches = "mim"
  params = jax.eval_shape(
    lambda r: dig.init_variables(config, r, _arm_batch(0)), jax.random.PRNGKey(0)
  )
  assert set(params["params"]) == {"encoder", "mim_head"}
  assert params["model_state"]["ema"] == {} and params["model_state"]["batch_stats"] == {}
