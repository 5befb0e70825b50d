"""Shared by tests/test_scale.py and tests/test_multihost.py: one compiled 1-device DiG smoke
setup (the reference every mesh / process layout is compared with), built once per session."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sslocr_jax.data import pipeline
from sslocr_jax.train import loop
from sslocr_jax.train import sharding
from tests.helpers import load_config
from tests.helpers import xla_optimizations

# Losses of the same DiG smoke steps on different meshes / process layouts agree to this
# (float32, different reduction orders over 5-6 steps of AdamW).
RTOL, ATOL = 2e-4, 1e-5


def fast_compiles():
  """Cheap XLA optimisation while the scale tests compile (compile time dominates them; the
  SPMD partitioning and the numerics checked are the same)."""
  return xla_optimizations(False)


@functools.lru_cache(maxsize=None)
def reference():
  """(setup dict, pristine initial state) of DiG smoke on one device, its step compiled."""
  config = load_config("dig", "smoke")
  s = loop.setup(config, mesh=sharding.make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1]))
  state0 = jax.tree.map(jnp.copy, s.state)
  spec = pipeline.batch_spec(config, s.method.make_views)
  run_steps(
    s.train_step, s.state, [{k: np.zeros(v.shape, v.dtype) for k, v in spec.items()}], s.mesh
  )  # compiles
  return s, state0


def run_steps(train_step, state, batches, mesh) -> tuple[list[dict], object]:
  """Applies `train_step` to each numpy global batch (placed on `mesh`); (metrics, state)."""
  out = []
  for batch in batches:
    state, metrics = train_step(state, sharding.global_batch(batch, mesh))
    out.append(jax.device_get(metrics))
  return out, state


def reference_losses(batches) -> list[dict]:
  """Metrics of the 1-device reference on the given numpy global batches, from step 0."""
  s, state0 = reference()
  return run_steps(s.train_step, jax.tree.map(jnp.copy, state0), batches, s.mesh)[0]


def assert_same_losses(
  got: list[dict], want: list[dict], keys=("loss", "mim_loss", "contrastive_loss")
):
  assert len(got) == len(want)
  for i, (a, b) in enumerate(zip(got, want)):
    for k in keys:
      np.testing.assert_allclose(a[k], b[k], rtol=RTOL, atol=ATOL, err_msg=f"step {i + 1} {k}")
