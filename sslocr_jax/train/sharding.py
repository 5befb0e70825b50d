"""Device mesh and shardings, declared by logical axis names (maxtext style).

Models annotate params with logical names (`embed`, `mlp`, `heads`, ...) through
`nn.with_logical_partitioning`; `config.sharding.logical_rules` maps those names to the mesh
axes `data` and `fsdp`. The batch is split over both axes. Changing the parallelism is a
config change: `config.mesh = {"data": -1, "fsdp": 1}` is pure data parallelism,
`{"data": 1, "fsdp": -1}` shards every annotated param over all devices (ZeRO-3 style).
"""

from collections.abc import Sequence
import math

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a `Mesh` with axes (`data`, `fsdp`); one size may be -1 (= the remaining devices)."""
  devices = list(devices if devices is not None else jax.devices())
  sizes = [int(mesh_config.get(a, 1)) for a in MESH_AXES]
  unknown = set(mesh_config.keys()) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"config.mesh has unknown axes {sorted(unknown)}; valid: {MESH_AXES}")
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  if -1 in sizes:
    rest = math.prod(s for s in sizes if s != -1)
    if len(devices) % rest:
      raise ValueError(f"config.mesh {dict(zip(MESH_AXES, sizes))} does not divide "
                       f"{len(devices)} devices")
    sizes[sizes.index(-1)] = len(devices) // rest
  if math.prod(sizes) != len(devices):
    raise ValueError(f"config.mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} "
                     f"devices, {len(devices)} are available")
  return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def logical_rules(config) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
  """The (logical name -> mesh axes) table from `config.sharding.logical_rules`."""
  rules = config.get("sharding", {}).get("logical_rules", DEFAULT_RULES)
  return tuple((name, tuple(ax) if isinstance(ax, list) else ax) for name, ax in rules)


DEFAULT_RULES = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("mlp", None),
    ("heads", None),
    ("vocab", None),
    ("conv_in", None),
    ("conv_out", "fsdp"),
)


def param_shardings(boxed_params, mesh: Mesh, rules):
  """Shardings for (abstract, boxed) params: annotated leaves follow the rules, others replicate.

  Returns a tree shaped like the *unboxed* params. A logical name mapped to a mesh axis whose
  size does not divide the dimension is replicated instead (e.g. a 3-wide conv input over 8
  fsdp devices).
  """
  is_box = lambda x: isinstance(x, nn.Partitioned)

  def to_sharding(x):
    if is_box(x):
      spec = nn.logical_to_mesh_axes(x.names, rules)
      return NamedSharding(mesh, _fit(spec, x.value.shape, mesh))
    return NamedSharding(mesh, P())
  return jax.tree.map(to_sharding, boxed_params, is_leaf=is_box)


def _path_names(path) -> tuple:
  return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)


def state_shardings(abstract_state, params_shardings, mesh: Mesh):
  """Shardings for any state pytree, derived from the params' shardings.

  A leaf whose key path ends with a parameter's path (optimizer moments, EMA copies) takes
  that parameter's sharding; every other leaf (step, rng, BatchNorm statistics, scalars) is
  replicated.
  """
  by_path = {_path_names(p): sh for p, sh in jax.tree_util.tree_flatten_with_path(
      params_shardings, is_leaf=lambda x: isinstance(x, NamedSharding))[0]}
  replicated_ = NamedSharding(mesh, P())

  def pick(path, leaf):
    names = _path_names(path)
    for start in range(len(names)):
      sh = by_path.get(names[start:])
      if sh is not None and len(sh.spec) <= len(getattr(leaf, "shape", ())):
        return sh
    return replicated_
  return jax.tree_util.tree_map_with_path(pick, abstract_state)


def _fit(spec: P, shape, mesh: Mesh) -> P:
  """Drops mesh axes that do not divide their dimension."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else (axes or ())
    size = math.prod(mesh.shape[a] for a in names)
    out.append(axes if axes and dim % size == 0 else None)
  return P(*out)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over `data` x `fsdp`."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Process-local numpy batch -> global `jax.Array`s sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      local_batch)
