"""SimAN: SAN's pure parts, the views, the alternating updates, the smoke run and its resume."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslocr_jax import config_utils
from sslocr_jax.methods import siman
from sslocr_jax.models import siman_nets
from sslocr_jax.train import checkpoint as ckpt_lib
from sslocr_jax.train import state as state_lib
from sslocr_jax.train import step as step_lib
from tests.helpers import fill_like
from tests.helpers import load_config


def _features(seed, shape=(2, 12, 8), scale=3.0, shift=5.0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.normal(size=shape) * scale + shift, jnp.float32)


# ----------------------------------------------------------------------------- SAN
def test_instance_norm_removes_per_channel_mean_and_std():
  x = _features(0) * jnp.arange(1.0, 9.0) + jnp.arange(8.0) * 10  # distinct stats per channel
  y = siman_nets.instance_norm(x, eps=1e-8)
  np.testing.assert_allclose(y.mean(axis=1), 0.0, atol=1e-5)
  np.testing.assert_allclose(y.std(axis=1), 1.0, atol=1e-5)
  mean, std = siman_nets.spatial_stats(x, eps=0.0)
  np.testing.assert_allclose(mean[:, 0], np.mean(np.asarray(x), axis=1), rtol=1e-5)
  np.testing.assert_allclose(std[:, 0], np.std(np.asarray(x), axis=1), rtol=1e-5)
  # a per-channel affine change of the input (a "style" change) leaves IN's output unchanged
  y2 = siman_nets.instance_norm(x * jnp.arange(2.0, 10.0) - 7.0, eps=1e-8)
  np.testing.assert_allclose(y2, y, atol=1e-4)


def test_attention_rows_sum_to_one_and_pick_the_matching_location():
  n, d = 6, 16
  keys = jnp.asarray(np.linalg.qr(np.random.default_rng(1).normal(size=(d, d)))[0][:n]) * 8.0
  perm = np.array([3, 0, 5, 1, 4, 2])
  queries = keys[perm]  # query i matches key perm[i]
  a = siman_nets.attention(queries[None], keys[None])[0]
  np.testing.assert_allclose(a.sum(axis=-1), 1.0, atol=1e-6)
  np.testing.assert_array_equal(np.argmax(a, axis=-1), perm)
  assert float(a[np.arange(n), perm].min()) > 0.99


def test_aligned_stats_are_the_attention_weighted_mean_and_std():
  fs = _features(2, (1, 4, 3))
  a = jax.nn.softmax(_features(3, (1, 5, 4), scale=1.0, shift=0.0), axis=-1)
  mean, std = siman_nets.aligned_stats(a, fs, eps=0.0)
  a0, f0 = np.asarray(a[0], np.float64), np.asarray(fs[0], np.float64)
  want_mean = a0 @ f0
  want_std = np.sqrt(np.maximum(a0 @ (f0**2) - want_mean**2, 0.0))
  np.testing.assert_allclose(mean[0], want_mean, rtol=1e-5)
  np.testing.assert_allclose(std[0], want_std, rtol=1e-3, atol=1e-3)
  # one-hot attention: the picked location's value, zero spread
  onehot = jax.nn.one_hot(jnp.array([[2, 0, 1, 3, 2]]), 4)
  mean, std = siman_nets.aligned_stats(onehot, fs, eps=0.0)
  np.testing.assert_allclose(mean[0], np.asarray(fs[0])[[2, 0, 1, 3, 2]], rtol=1e-6)
  np.testing.assert_allclose(std, 0.0, atol=2e-3)


def test_san_returns_the_target_features_when_source_and_target_are_identical():
  """Fa = Fs = F, sharp attention (identity-like projections on well-separated IN(F)):
  A ~ I, so mean = A F ~ F and std ~ sqrt(eps) ~ 0, and std * IN(F) + mean ~ F."""
  n, d = 8, 8
  rng = np.random.default_rng(4)
  base = np.linalg.qr(rng.normal(size=(d, d)))[0][:n] * 3.0  # distinct positions
  f = jnp.asarray(base * rng.uniform(0.5, 2.0, size=d) + rng.normal(size=d) * 4, jnp.float32)[None]
  san = siman_nets.SAN(proj_dim=d, eps=1e-6)
  params = nn.unbox(san.init(jax.random.PRNGKey(0), f, f)["params"])
  sharp = {
    "query": {"kernel": jnp.eye(d) * 6.0, "bias": jnp.zeros(d)},
    "key": {"kernel": jnp.eye(d) * 6.0, "bias": jnp.zeros(d)},
  }
  params = jax.tree.map(lambda p, s: s.astype(p.dtype), params, sharp)
  out, attn = san.apply({"params": params}, f, f)
  assert float(jnp.min(jnp.diagonal(attn[0]))) > 0.99
  np.testing.assert_allclose(out, f, atol=0.05 * float(jnp.abs(f).max()))


def test_san_output_ignores_the_style_of_the_augmented_features():
  """IN(Fa) drops Fa's per-channel mean/std: restyling a style-changed copy gives the same."""
  fa, fs = _features(5), _features(6)
  san = siman_nets.SAN(proj_dim=8)
  params = san.init(jax.random.PRNGKey(1), fa, fs)
  out1, _ = san.apply(params, fa, fs)
  out2, _ = san.apply(params, fa * 3.0 - 2.0, fs)
  np.testing.assert_allclose(out1, out2, atol=1e-4)


# ----------------------------------------------------------------------------- views
def test_views_are_adjacent_patches_with_a_style_only_augmented_target():
  config = load_config("siman", "smoke")
  line = np.random.default_rng(0).integers(0, 256, (40, 300, 3), dtype=np.uint8)
  from sslocr_jax.data import augment

  resized = augment.resize(line, 32, 128)
  sides = set()
  for seed in range(8):
    v = siman.make_views({"image": line, "label": ""}, np.random.default_rng(seed), config)
    assert all(v[k].shape == (32, 64, 3) and v[k].dtype == np.uint8 for k in v)
    left, right = resized[:, :64], resized[:, 64:]
    assert {v["source"].tobytes(), v["target"].tobytes()} == {left.tobytes(), right.tobytes()}
    sides.add(v["target"].tobytes() == left.tobytes())
    assert not np.array_equal(v["augmented"], v["target"])
  assert sides == {True, False}  # the target side is random


# ----------------------------------------------------------------------------- updates
def _batch(config, n: int = 8, seed: int = 0) -> dict:
  """n examples of the views of the synthetic lines, stacked: {name: uint8 [n, 32, W, 3]}."""
  from sslocr_jax.data import sources

  source = sources.make_source(config.data)
  rng = np.random.default_rng(seed)
  views = [siman.make_views(source[i], rng, config) for i in range(n)]
  return {k: np.stack([v[k] for v in views]) for k in views[0]}


def _changed(a, b) -> dict:
  return {
    net: any(
      bool(jnp.any(x != y)) for x, y in zip(jax.tree.leaves(a[net]), jax.tree.leaves(b[net]))
    )
    for net in a
  }


def test_each_phase_changes_only_its_own_networks():
  """One step of each phase alone (the loop's step runs them in sequence): the generator
  phase leaves the discriminator bit-identical and vice versa. ViT smoke encoder (cheap to
  compile on a CPU; the resnet one runs in the smoke run below)."""
  config = load_config("siman", "smoke,encoder=vit")
  batch = _batch(config)
  variables = fill_like(  # values without compiling an init
    nn.unbox(
      jax.eval_shape(lambda r: siman.init_variables(config, r, batch), jax.random.PRNGKey(0))
    )
  )
  assert variables["model_state"] == {}  # no BatchNorm in the ViT
  all_phases = siman.phases(config)
  assert [p for p, _ in all_phases] == ["generator", "discriminator"]
  for phase, keys in all_phases:
    opt, schedule = _optimizer(config, variables["params"], phase, keys)
    state = state_lib.TrainState(
      step=jnp.asarray(20, jnp.int32),
      params=variables["params"],  # adversarial term on
      opt_state={phase: opt.init({k: variables["params"][k] for k in keys})},
      model_state=variables["model_state"],
      rng=jax.random.PRNGKey(1),
    )
    step_fn = jax.jit(
      step_lib.make_train_step(siman, config, {phase: opt}, {phase: schedule}, [(phase, keys)])
    )
    new, metrics = step_fn(state, batch)
    changed = _changed(state.params, new.params)
    assert changed == {net: net in keys for net in state.params}, (phase, changed)
    assert np.isfinite(float(metrics["loss"]))


def _optimizer(config, params, phase, keys):
  """The phase's optimizer without lr warm-up (the schedule runs on the optimizer's own count,
  so the loop's optimizers make a zero update on their first step)."""
  from sslocr_jax.train import optim

  optim_config = config.optim[phase].copy_and_resolve_references()
  optim_config.warmup_steps = 0
  return optim.make_optimizer(
    optim_config,
    {k: params[k] for k in keys},
    config.batch_size,
    config_utils.schedule_steps(config),
  )


def test_discriminator_phase_uses_no_generator_gradient_and_keeps_batch_stats(smoke_run):
  """Resnet (BatchNorm) encoder, the smoke run's trained state."""
  config = load_config("siman", "smoke")
  state = ckpt_lib.restore_params(smoke_run("siman"))
  params, model_state = state["params"], state["model_state"]
  assert "encoder" in model_state["batch_stats"]
  batch = _batch(config)

  def disc_loss(params):
    loss, (_, ms) = siman.loss_fn(
      params,
      model_state,
      batch,
      jax.random.PRNGKey(0),
      step=0,
      phase="discriminator",
      config=config,
    )
    return loss, ms

  grads, ms = jax.jit(jax.grad(disc_loss, has_aux=True))(params)
  for net in siman.GENERATOR:
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads[net])), net
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads["discriminator"]))
  jax.tree.map(np.testing.assert_array_equal, ms, model_state)


def test_adversarial_weight_is_zero_during_the_warm_up():
  config = load_config("siman", "smoke")
  w = [float(siman.adv_weight_at(jnp.asarray(t), config)) for t in (0, 11, 12, 100)]
  assert w == pytest.approx([0.0, 0.0, config.adv_weight, config.adv_weight])


def test_cpu_and_smoke_encoders_match_finetune_for_init_from():
  keys = {
    "resnet": ("channels", "blocks", "lstm_hidden", "lstm_layers", "tps", "tps_channels"),
    "vit": ("embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size"),
  }
  for variant in ("cpu", "smoke"):
    for encoder, fields in keys.items():
      ours = load_config("siman", f"{variant},encoder={encoder}").model
      theirs = load_config("finetune", f"{variant},encoder={encoder}").model
      assert ours.name == theirs.name == encoder
      assert {k: ours[k] for k in fields} == {k: theirs[k] for k in fields}, (variant, encoder)
