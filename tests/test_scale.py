"""Scaling on 8 fake CPU devices: FSDP meshes, gradient accumulation, bfloat16 compute.

Every mesh layout must give the 1-device losses (tolerance `scale_helpers.RTOL/ATOL`: float32
with different reduction orders, 5 AdamW steps) and hold 1/fsdp of each sharded parameter.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslocr_jax.train import loop
from sslocr_jax.train import sharding
from sslocr_jax.train import step as step_lib
from tests import scale_helpers
from tests.helpers import load_config

STEPS = 5
FC1 = ("encoder", "blocks_0", "mlp", "fc1", "kernel")  # [embed=32, mlp=128]: ("embed", "mlp")


@pytest.fixture(scope="module", autouse=True)
def _fast_compiles():
  with scale_helpers.fast_compiles():
    yield


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _smoke_batches(n=STEPS):
  s, _ = scale_helpers.reference()
  it = iter(s.dataset)
  return [next(it) for _ in range(n)]


@pytest.fixture(scope="module")
def reference_metrics():
  batches = _smoke_batches()
  return batches, scale_helpers.reference_losses(batches)


@pytest.mark.parametrize("data,fsdp", [(8, 1), (2, 4), (1, 8)])
def test_mesh_same_losses_and_params_sharded(data, fsdp, reference_metrics):
  batches, want = reference_metrics
  config = load_config("dig", "smoke")
  config.mesh.data, config.mesh.fsdp = data, fsdp
  s = loop.setup(config)
  assert dict(s.mesh.shape) == {"data": data, "fsdp": fsdp}
  state = s.state

  # Declared sharding: "embed" -> fsdp on fc1's first axis; Adam moments and EMA follow.
  kernel = _get(state.params, FC1)
  assert kernel.sharding.spec[0] == "fsdp" and kernel.shape == (32, 128)
  assert len(kernel.sharding.device_set) == 8
  for shard in kernel.addressable_shards:
    assert shard.data.shape == (32 // fsdp, 128)
  followers = [_get(state.model_state["ema"], FC1)]
  for path, leaf in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]:
    if tuple(getattr(k, "key", None) for k in path[-len(FC1) :]) == FC1:
      followers.append(leaf)
  assert len(followers) == 3  # EMA, Adam mu, Adam nu
  for leaf in followers:
    assert leaf.sharding.is_equivalent_to(kernel.sharding, 2)
  total = sharding.bytes_per_device(
    jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state.params)
  )
  per_device = sharding.bytes_per_device(state.params)
  if fsdp == 8:  # everything with an "embed" / "conv_out" axis is split 8 ways
    assert per_device < 0.3 * total, (per_device, total)

  got, _ = scale_helpers.run_steps(s.train_step, state, batches, s.mesh)
  scale_helpers.assert_same_losses(got, want)


def test_dig_step_moves_no_examples_between_devices():
  """On a pure data-parallel mesh each device keeps its own examples: DiG pairs the two views
  per example (`dig.pair`), so the compiled step has no all-to-all / collective-permute (the
  concatenated views had 17 / 20); what remains is the gradient all-reduce and the all-gather
  of the contrastive keys (global negatives)."""
  config = load_config("dig", "smoke")
  config.mesh.data, config.mesh.fsdp = 8, 1
  s = loop.setup(config)
  batch = sharding.global_batch(next(iter(s.dataset)), s.mesh)
  hlo = s.train_step.lower(s.state, batch).compile().as_text()
  assert hlo.count("all-to-all(") == 0
  assert hlo.count("collective-permute(") == 0
  assert hlo.count("all-gather(") == 2  # k2 and k1, one per InfoNCE term
  assert hlo.count("all-reduce(") > 0


def test_grad_accumulation_equals_full_batch():
  """k=2 micro-batches of 8 == one batch of 16, for MIM-only DiG (contrastive_weight=0).

  Exact up to float summation order because that loss is a mean of per-image terms: every
  image has exactly round(0.7 * 256) masked patches, so the masked-patch mean of a micro-batch
  is the mean of its images' errors; without the contrastive branch no BatchNorm or negatives
  couple images; the encoder is per-example (LayerNorm per token, no dropout). With the
  contrastive term the two differ by design (negatives / BN statistics per micro-batch).
  """
  config = load_config("dig", "smoke")
  config.contrastive_weight, config.batch_size = 0.0, 16
  s = loop.setup(config)
  it = iter(s.dataset)
  batches = [sharding.global_batch(next(it), s.mesh) for _ in range(3)]
  compiled = {}
  for k in (1, 2):
    c = config.copy_and_resolve_references()
    c.grad_accum_steps = k
    step = loop.jit_train_step(
      s.method, c, s.optimizers, s.schedules, s.phases, s.shardings, s.batch_shardings, s.mesh
    )
    compiled[k] = step.lower(s.state, batches[0]).compile()
  # Micro-batches stay spread over the 8 devices: accumulation adds no collectives.
  hlo = {k: c.as_text() for k, c in compiled.items()}
  for op in ("all-to-all(", "collective-permute(", "all-gather(", "all-reduce("):
    assert hlo[2].count(op) == hlo[1].count(op), op
  assert "while" in hlo[2]  # one scan over the micro-batches

  results = {}
  for k, fn in compiled.items():
    state, metrics = jax.tree.map(jnp.copy, s.state), []
    for b in batches:
      state, m = fn(state, b)
      metrics.append(jax.device_get(m))
    results[k] = (metrics, jax.device_get(state.params))
  for a, b in zip(results[1][0], results[2][0]):
    for key in ("loss", "mim_loss", "grad_norm"):
      np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=key)
  for a, b in zip(jax.tree.leaves(results[1][1]), jax.tree.leaves(results[2][1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_micro_batches_layout_and_errors():
  x = jnp.arange(8)
  np.testing.assert_array_equal(
    step_lib.micro_batches({"x": x}, 2)["x"], [[0, 2, 4, 6], [1, 3, 5, 7]]
  )
  with pytest.raises(ValueError, match="not divisible by grad_accum_steps=3"):
    step_lib.micro_batches({"x": x}, 3)


def test_bfloat16_trains_with_float32_master_weights():
  config = load_config("dig", "smoke")
  config.dtype = "bfloat16"
  s = loop.setup(config)
  it = iter(s.dataset)
  batches = [next(it) for _ in range(STEPS)]
  lowered = s.train_step.lower(s.state, sharding.global_batch(batches[0], s.mesh))
  assert "bf16" in lowered.as_text()  # the encoder computes in bfloat16
  metrics, state = scale_helpers.run_steps(s.train_step, s.state, batches, s.mesh)
  assert all(np.isfinite(m["loss"]) for m in metrics)
  assert metrics[-1]["mim_loss"] < 0.9 * metrics[0]["mim_loss"]
  assert metrics[-1]["loss"] < metrics[0]["loss"]
  floats = [
    x
    for x in jax.tree.leaves((state.params, state.opt_state, state.model_state))
    if jnp.issubdtype(x.dtype, jnp.floating)
  ]
  assert floats and all(x.dtype == jnp.float32 for x in floats)
