"""The same DiG smoke steps on 1 device and on 8 fake devices give the same losses."""

import jax
import numpy as np

from sslocr_jax.train import loop
from sslocr_jax.train import sharding
from tests.helpers import load_config


def _losses(config, devices, steps=3):
  s = loop.setup(config, mesh=sharding.make_mesh(config.mesh, devices))
  it = iter(s.dataset)
  state, out = s.state, []
  for _ in range(steps):
    batch = sharding.global_batch(next(it), s.mesh)
    state, metrics = s.train_step(state, batch)
    out.append(jax.device_get(metrics))
  return out, state


def test_one_vs_eight_devices_same_losses():
  config = load_config("dig", "smoke")
  one, _ = _losses(config, jax.devices()[:1])
  eight, state = _losses(config, jax.devices()[:8])
  assert len(jax.devices()) == 8
  for a, b in zip(one, eight):
    for key in ("loss", "mim_loss", "contrastive_loss"):
      np.testing.assert_allclose(a[key], b[key], rtol=2e-4, atol=1e-5)
  # the batch really was split over 8 devices
  assert len(state.params["encoder"]["blocks_0"]["attn"]["qkv"]["kernel"].sharding.device_set) == 8


def test_make_mesh_sizes():
  mesh = sharding.make_mesh({"data": -1, "fsdp": 2}, jax.devices()[:8])
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
  try:
    sharding.make_mesh({"data": 3, "fsdp": 1}, jax.devices()[:8])
  except ValueError as e:
    assert "needs 3 devices" in str(e)
  else:
    raise AssertionError("expected a ValueError")
