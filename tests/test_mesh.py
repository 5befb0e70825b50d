"""Mesh construction. (That the same DiG smoke steps give the 1-device losses on 8 fake devices,
data-parallel or FSDP, is tests/test_scale.py's `test_mesh_same_losses_and_params_sharded`,
which shares one compiled 1-device reference with tests/test_multihost.py.)"""

import jax

from sslocr_jax.train import sharding


def test_make_mesh_sizes():
  mesh = sharding.make_mesh({"data": -1, "fsdp": 2}, jax.devices()[:8])
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
  try:
    sharding.make_mesh({"data": 3, "fsdp": 1}, jax.devices()[:8])
  except ValueError as e:
    assert "needs 3 devices" in str(e)
  else:
    raise AssertionError("expected a ValueError")
