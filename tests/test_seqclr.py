"""SeqCLR: instance mappings, NT-Xent, views, loss wiring, and the smoke run end to end
(loss falls, exact resume, 1 vs 8 devices) on 8 fake CPU devices."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from sslocr_jax.methods import seqclr
from sslocr_jax.train import loop
from sslocr_jax.train import sharding
from tests.helpers import load_config


# ----------------------------------------------------------------------------- instances
def test_window_pooling_equals_hand_computed_averages():
  frames = jnp.asarray(np.random.default_rng(0).normal(size=(2, 33, 3)), jnp.float32)
  out = seqclr.instance_mapping(frames, "window", 5)
  assert out.shape == (2, 5, 3)
  # PyTorch adaptive_avg_pool1d(33 -> 5): [floor(33 i / 5), ceil(33 (i + 1) / 5))
  bounds = [(0, 7), (6, 14), (13, 20), (19, 27), (26, 33)]
  for i, (s, e) in enumerate(bounds):
    np.testing.assert_allclose(
      out[:, i], np.asarray(frames)[:, s:e].mean(axis=1), rtol=1e-5, atol=1e-6
    )
  # divisible case: plain non-overlapping averages
  x = jnp.arange(10, dtype=jnp.float32).reshape(1, 10, 1)
  np.testing.assert_allclose(
    seqclr.instance_mapping(x, "window", 5)[0, :, 0], [0.5, 2.5, 4.5, 6.5, 8.5]
  )


def test_all_and_frame_mappings():
  frames = jnp.asarray(np.random.default_rng(1).normal(size=(3, 33, 4)), jnp.float32)
  np.testing.assert_allclose(
    seqclr.instance_mapping(frames, "all")[:, 0], frames.mean(axis=1), rtol=1e-6
  )
  np.testing.assert_array_equal(seqclr.instance_mapping(frames, "frame"), frames)
  with pytest.raises(ValueError, match="valid: all, frame, window"):
    seqclr.instance_mapping(frames, "pixel")


# ----------------------------------------------------------------------------- NT-Xent
def _nt_xent_numpy(z1, z2, t):
  z = np.concatenate([z1, z2]).astype(np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  n, m = len(z), len(z1)
  losses = []
  for i in range(n):
    pos = (i + m) % n
    others = [j for j in range(n) if j != i]  # everything but itself is a candidate
    logits = np.array([z[i] @ z[j] / t for j in others])
    losses.append(-(z[i] @ z[pos] / t - np.log(np.exp(logits).sum())))
  return np.mean(losses)


def test_nt_xent_matches_numpy_reference():
  rng = np.random.default_rng(0)
  z1, z2 = rng.normal(size=(10, 6)), rng.normal(size=(10, 6))
  loss, acc = seqclr.nt_xent(jnp.asarray(z1), jnp.asarray(z2), 0.1)
  np.testing.assert_allclose(loss, _nt_xent_numpy(z1, z2, 0.1), rtol=1e-5)
  assert 0.0 <= float(acc) <= 1.0


def test_nt_xent_positives_are_the_same_position_in_the_other_view():
  """Instances of B=2 images x W=3 windows; view 2 equals view 1 (matching positions): low
  loss, accuracy 1. Shifting view 2's windows by one position within each image (so each
  positive is another window of the same image) makes it high: other windows are negatives."""
  z1 = jnp.eye(6) * 3.0  # row b*W + w
  loss, acc = seqclr.nt_xent(z1, z1, 0.1)
  assert float(loss) < 1e-3 and float(acc) == 1.0
  shifted = z1.reshape(2, 3, 6)[:, [1, 2, 0]].reshape(6, 6)
  loss_s, acc_s = seqclr.nt_xent(z1, shifted, 0.1)
  assert float(loss_s) > 5.0 and float(acc_s) == 0.0


# ----------------------------------------------------------------------------- views, wiring
def test_make_views_shapes():
  config = ml_collections.ConfigDict(dict(image_height=32, image_width=128))
  image = np.random.default_rng(0).integers(0, 256, (40, 200, 3), dtype=np.uint8)
  views = seqclr.make_views({"image": image, "label": "x"}, np.random.default_rng(1), config)
  assert set(views) == {"image1", "image2"}
  assert views["image1"].shape == views["image2"].shape == (32, 128, 3)
  assert views["image1"].dtype == np.uint8
  assert not np.array_equal(views["image1"], views["image2"])  # independent augmentations


@pytest.mark.parametrize(
  "projection,mapping,stage,instances",
  [("none", "all", "lstm", 1), ("bilstm", "frame", "cnn", 33), ("mlp", "window", "lstm", 5)],
)
def test_networks_and_loss_wiring_per_option(projection, mapping, stage, instances):
  config = load_config("seqclr", "smoke")
  config.projection, config.instance_mapping, config.seqclr_encoder_stage = (
    projection,
    mapping,
    stage,
  )
  rng = np.random.default_rng(0)
  batch = {
    k: jnp.asarray(rng.integers(0, 256, (4, 32, 128, 3), dtype=np.uint8))
    for k in ("image1", "image2")
  }
  # Abstract (traced, not compiled: ~10-20 s per option on this CPU); the default options run
  # for real in the smoke run and test_one_vs_eight_devices_same_loss_grads_and_stats.
  shapes = nn.unbox(
    jax.eval_shape(lambda r: seqclr.init_variables(config, r, batch), jax.random.PRNGKey(0))
  )
  params, state = shapes["params"], shapes["model_state"]
  nets = {
    "none": {"encoder"},
    "bilstm": {"encoder", "projection"},
    "mlp": {"encoder", "projection"},
  }[projection]
  assert set(params) == nets == set(seqclr.phases(config)[0][1])
  assert ("lstm_0" in params["encoder"]) == (stage == "lstm")
  assert set(state["batch_stats"]) == (
    {"encoder", "projection"} if projection == "mlp" else {"encoder"}
  )

  def f(p, st):
    return jax.value_and_grad(
      lambda p: seqclr.loss_fn(
        p, st, batch, jax.random.PRNGKey(1), step=0, phase="main", config=config
      ),
      has_aux=True,
    )(p)

  frames = jax.eval_shape(
    lambda p, st: seqclr.frames_of(
      seqclr.networks(config), p, st["batch_stats"], batch["image1"], config
    )[0],
    params,
    state,
  )
  inst = jax.eval_shape(lambda f: seqclr.instance_mapping(f, mapping, config.num_windows), frames)
  assert frames.shape[:2] == (4, 33) and inst.shape[:2] == (4, instances)
  (loss, (metrics, new_state)), grads = jax.eval_shape(f, params, state)
  assert loss.shape == () and metrics["contrastive_acc"].shape == ()
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  assert jax.tree.structure(grads) == jax.tree.structure(params)


def test_visualize_shows_tps_rectified_view():
  config = load_config("seqclr", "smoke,tps=true")
  batch = {k: jnp.zeros((4, 32, 128, 3), jnp.uint8) for k in ("image1", "image2")}
  shapes = nn.unbox(
    jax.eval_shape(lambda r: seqclr.init_variables(config, r, batch), jax.random.PRNGKey(0))
  )
  grid = jax.eval_shape(
    lambda v: seqclr.visualize(v["params"], v["model_state"], batch, None, config), shapes
  )["seqclr_views"]
  assert grid.shape == (4 * 34, 3 * 130, 3) and grid.dtype == jnp.uint8  # 3 panels, 2 px gaps


def test_bad_option_is_a_clear_error():
  config = load_config("seqclr", "smoke")
  config.projection = "transformer"
  with pytest.raises(ValueError, match="config.projection='transformer' is unknown"):
    seqclr.networks(config)


def test_config_variants():
  default = load_config("seqclr")
  assert default.model.name == "resnet" and default.model.tps and default.model.channels == 512
  assert default.batch_size >= 256 and default.temperature == 0.1
  assert (default.instance_mapping, default.num_windows) == ("window", 5)
  assert not load_config("seqclr", "cpu").model.tps
  assert load_config("seqclr", "cpu,tps=true").model.tps
  assert not load_config("seqclr", "tps=false").model.tps
  smoke = load_config("seqclr", "smoke")
  for field in (
    "instance_mapping",
    "num_windows",
    "projection",
    "temperature",
    "total_steps",
    "seed",
    "seqclr_encoder_stage",
  ):
    assert field in smoke, field


# ----------------------------------------------------------------------------- end to end
def test_one_vs_eight_devices_same_loss_grads_and_stats(smoke_run):
  """The first smoke step on 8 devices (the loop's sharded train step) and the same loss on
  one device (a plain jit of loss_fn, no shardings) agree: BatchNorm statistics and the
  NT-Xent negatives are over the global batch on any mesh. (Multi-step optimizer equality
  on 1 vs 8 devices is tests/test_scale.py's.)"""
  smoke_run("seqclr")  # compiled the sharded train step (the compilation cache)
  config = load_config("seqclr", "smoke")
  s = loop.setup(config, mesh=sharding.make_mesh(config.mesh, jax.devices()[:8]))
  host_batch = next(iter(s.dataset))
  state0 = jax.device_get(s.state)  # before the donated step
  kernel = s.state.params["encoder"]["cnn"]["conv4_2"]["kernel"]
  assert len(kernel.sharding.device_set) == 8  # fsdp-able params really are on 8 devices
  state8, metrics8 = s.train_step(s.state, sharding.global_batch(host_batch, s.mesh))

  @jax.jit
  def one_device(params, model_state, batch):
    return jax.value_and_grad(
      lambda p: seqclr.loss_fn(
        p,
        model_state,
        batch,
        jax.random.fold_in(jax.random.fold_in(state0.rng, 0), 0),
        step=0,
        phase="main",
        config=config,
      ),
      has_aux=True,
    )(params)

  batch1 = jax.device_put(host_batch, jax.devices()[0])
  (loss1, (metrics1, stats1)), grads1 = one_device(state0.params, state0.model_state, batch1)
  assert np.isfinite(float(loss1)) and metrics1["num_instances"] == 2 * 8 * 5
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads1))
  np.testing.assert_allclose(metrics8["loss"], loss1, rtol=2e-4, atol=1e-5)
  np.testing.assert_allclose(metrics8["grad_norm"], optax.tree.norm(grads1), rtol=2e-3)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5),
    jax.device_get(state8.model_state),
    jax.device_get(stats1),
  )


def test_cpu_and_smoke_encoders_match_finetune_for_init_from():
  """A `seqclr.py:cpu` / `:smoke` workdir is a valid `init_from` of `finetune.py:cpu` /
  `:cpu60` / `:smoke` with the ResNet: the encoder fields agree."""
  fields = ("channels", "blocks", "lstm_hidden", "lstm_layers", "tps", "tps_channels")
  for pre, fine in (("cpu", "cpu"), ("cpu", "cpu60"), ("smoke", "smoke")):
    ours = load_config("seqclr", pre).model
    theirs = load_config("finetune", f"{fine},encoder=resnet").model
    assert ours.name == theirs.name == "resnet"
    assert {k: ours[k] for k in fields} == {k: theirs[k] for k in fields}, (pre, fine)
