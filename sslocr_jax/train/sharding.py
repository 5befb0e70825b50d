"""Device mesh and shardings, declared by logical axis names (maxtext style).

Models annotate params with logical names (`embed`, `mlp`, `heads`, ...) through
`nn.with_logical_partitioning`; `config.sharding.logical_rules` maps those names to the mesh
axes `data` and `fsdp`. The batch is split over both axes. Changing the parallelism is a
config change: `config.mesh = {"data": -1, "fsdp": 1}` is pure data parallelism,
`{"data": 1, "fsdp": -1}` shards every annotated param over all devices (ZeRO-3 style).

Parameters are *stored* sharded (params, optimizer moments, EMA copies: 1/fsdp per device) and
*computed with* gathered (`gathered`: the same shardings without `fsdp`), so XLA all-gathers
each kernel for the forward/backward and reduce-scatters its gradient, while the activations
stay split over the batch. The batch axis is split over `data` x `fsdp`, so BatchNorm
statistics and contrastive negatives are those of the global batch. A large param whose logical
axes leave `fsdp` unused (a [4096, 4096] hidden layer annotated (mlp, mlp), an unannotated
param) is sharded on its largest divisible dimension (`fsdp_min_size`, big_vision style).
Multi-host: every process runs the same program on the same mesh of all (global) devices; each
feeds its own process-local slice of the batch (`global_batch`).
"""

from collections.abc import Sequence
import math

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from sslocr_jax import errors

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a `Mesh` with axes (`data`, `fsdp`); one size may be -1 (= the remaining devices)."""
  devices = list(devices if devices is not None else jax.devices())
  sizes = [int(mesh_config.get(a, 1)) for a in MESH_AXES]
  unknown = set(mesh_config.keys()) - set(MESH_AXES)
  if unknown:
    raise errors.UserError(f"config.mesh has unknown axes {sorted(unknown)}; valid: {MESH_AXES}")
  if sizes.count(-1) > 1:
    raise errors.UserError(
      f"config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}"
    )
  if -1 in sizes:
    rest = math.prod(s for s in sizes if s != -1)
    if len(devices) % rest:
      raise errors.UserError(
        f"config.mesh {dict(zip(MESH_AXES, sizes))} does not divide {len(devices)} devices"
      )
    sizes[sizes.index(-1)] = len(devices) // rest
  if math.prod(sizes) != len(devices):
    raise errors.UserError(
      f"config.mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} "
      f"devices, {len(devices)} are available"
    )
  return Mesh(_device_grid(devices, sizes), MESH_AXES)


def _device_grid(devices, sizes) -> np.ndarray:
  """Devices laid out as `sizes`: topology-aware on TPU (ICI rings), in the given order elsewhere.

  `jax.devices()` is process-major on GPU and CPU clusters; that order keeps each host's
  devices together on the inner (`fsdp`) axis (with fsdp <= devices per host, FSDP traffic
  stays on NVLink and only the data-parallel gradient reduction crosses hosts), and makes each
  process's batch rows one contiguous block of the global batch.
  """
  if devices[0].platform == "tpu" and len(devices) == jax.device_count():
    from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top

    return mesh_utils.create_device_mesh(sizes, devices)
  return np.asarray(devices).reshape(sizes)


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


FSDP_MIN_SIZE = 2**16  # elements; smaller params left replicated by the rules stay so


def fsdp_min_size(config) -> int:
  """`config.sharding.fsdp_min_size` (default `FSDP_MIN_SIZE`; 0 = rules only)."""
  return int(config.get("sharding", {}).get("fsdp_min_size", FSDP_MIN_SIZE))


def param_shardings(boxed_params, mesh: Mesh, rules, min_size: int = FSDP_MIN_SIZE):
  """Shardings for (abstract, boxed) params: annotated leaves follow the rules, others replicate.

  Returns a tree shaped like the *unboxed* params. A logical name mapped to a mesh axis whose
  size does not divide the dimension is replicated instead (e.g. a 3-wide conv input over 8
  fsdp devices). With an `fsdp` axis > 1, a param of >= `min_size` elements that the rules leave
  unsharded over `fsdp` is sharded on its largest dimension divisible by it.
  """
  is_box = lambda x: isinstance(x, nn.Partitioned)

  def to_sharding(x):
    if is_box(x):
      shape = x.value.shape
      spec = _fit(nn.logical_to_mesh_axes(x.names, rules), shape, mesh)
    else:
      shape, spec = x.shape, P()
    return NamedSharding(mesh, _fsdp_fallback(spec, shape, mesh, min_size))

  return jax.tree.map(to_sharding, boxed_params, is_leaf=is_box)


def _fsdp_fallback(spec: P, shape, mesh: Mesh, min_size: int) -> P:
  n = mesh.shape.get("fsdp", 1)
  axes = list(spec) + [None] * (len(shape) - len(spec))
  used = {a for ax in axes for a in ((ax,) if isinstance(ax, str) else (ax or ()))}
  if n == 1 or not min_size or math.prod(shape) < min_size or "fsdp" in used:
    return spec
  free = [i for i, (dim, ax) in enumerate(zip(shape, axes)) if ax is None and dim % n == 0]
  if not free:
    return spec
  axes[max(free, key=lambda i: shape[i])] = "fsdp"
  return P(*axes)


def gathered(shardings):
  """The shardings params are computed with: each one without the `fsdp` axis.

  Constraining the params to these inside the step makes XLA all-gather them per use and
  reduce-scatter their gradients (ZeRO-3), keeping activations split over the batch; left to
  itself, sharding propagation may split activations over features instead (for ViT-Base DiG
  on 8 devices: 4.4x the temporary memory and an all-reduce per matmul).
  """

  def drop(sh: NamedSharding) -> NamedSharding:
    out = []
    for ax in sh.spec:
      names = tuple(a for a in ((ax,) if isinstance(ax, str) else (ax or ())) if a != "fsdp")
      out.append(names[0] if len(names) == 1 else (names or None))
    return NamedSharding(sh.mesh, P(*out))

  return jax.tree.map(drop, shardings, is_leaf=lambda x: isinstance(x, NamedSharding))


def _path_names(path) -> tuple:
  return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)


def state_shardings(abstract_state, params_shardings, mesh: Mesh):
  """Shardings for any state pytree, derived from the params' shardings.

  A leaf whose key path ends with a parameter's path (optimizer moments, EMA copies) takes
  that parameter's sharding; every other leaf (step, rng, BatchNorm statistics, scalars) is
  replicated.
  """
  by_path = {
    _path_names(p): sh
    for p, sh in jax.tree_util.tree_flatten_with_path(
      params_shardings, is_leaf=lambda x: isinstance(x, NamedSharding)
    )[0]
  }
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
  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
  )


def local_rows(x, mesh: Mesh) -> np.ndarray:
  """This process's rows of a global array sharded over the batch axes, as numpy: the rows its
  `global_batch` input filled (all rows with one process)."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  return np.asarray(multihost_utils.global_array_to_host_local_array(x, mesh, P(BATCH_AXES)))


def bytes_per_device(tree) -> int:
  """Bytes one device holds of a pytree of sharded arrays (or ShapeDtypeStructs with a sharding).

  A leaf sharded over n devices counts 1/n of its size, a replicated leaf counts in full.
  """
  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) else x.shape
    total += math.prod(shape) * np.dtype(x.dtype).itemsize
  return int(total)
