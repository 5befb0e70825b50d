r"""Per-device memory of the compiled train step: data parallel vs FSDP (XLA memory analysis).

    python benchmarks/memory.py [--config=configs/dig.py:size=base] [--batch=8] [--devices=8]
        [--dtype=float32] [--remat]

Compiles the step ahead of time from abstract state (nothing is allocated, so ViT-Base fits on
a laptop) on `--devices` fake CPU devices, for the meshes data=N (parameters and optimizer
state replicated) and fsdp=N (sharded by the logical-axis rules, ZeRO-3 style), and prints per
device: the train state by part (params, optimizer state, EMA / BatchNorm state) from the
shardings, and XLA's argument / output / temporary buffer sizes. FSDP should divide the state by
about N (what stays replicated: biases and norms without a sharded axis, BatchNorm statistics).
With --remat, a third row rematerialises the encoder blocks under FSDP (smaller temporaries).

Table mode, per-device memory by model size, batch, dtype and remat (one row each, data
parallel; with --devices=1 the batch is the per-device batch):

    python benchmarks/memory.py --devices=1 --batch=128 --sizes=tiny,small,base \
        --dtypes=float32,bfloat16 --remats=none,full,save_dots

Measured on XLA:CPU here (docs/scaling.md has the table): an accelerator's compiler lays out
and fuses differently, so treat the figures as estimates and check on the device
(`jax.devices()[0].memory_stats()`).
"""

import os
import sys

_DEVICES = 8
for _arg in sys.argv:
  if _arg.startswith("--devices="):
    _DEVICES = int(_arg.split("=", 1)[1])
os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_DEVICES}"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from sslocr_jax import config_utils  # noqa: E402
from sslocr_jax.data import pipeline  # noqa: E402
from sslocr_jax.models import encoders  # noqa: E402
from sslocr_jax.train import loop  # noqa: E402
from sslocr_jax.train import registry  # noqa: E402
from sslocr_jax.train import sharding  # noqa: E402
from sslocr_jax.train import state as state_lib  # noqa: E402

_CONFIG = flags.DEFINE_string("config", "configs/dig.py:size=base", "config[:variant]")
_BATCH = flags.DEFINE_integer("batch", 8, "global batch size")
flags.DEFINE_integer("devices", _DEVICES, "fake CPU devices (read before jax starts)")
_DTYPE = flags.DEFINE_string("dtype", None, "compute dtype override (float32|bfloat16)")
_REMAT = flags.DEFINE_bool("remat", False, "also measure FSDP with remat of the encoder blocks")
_SIZES = flags.DEFINE_list("sizes", None, "table mode: encoder sizes (config variant size=S)")
_DTYPES = flags.DEFINE_list("dtypes", ["float32"], "table mode: compute dtypes")
_REMATS = flags.DEFINE_list("remats", ["none"], "table mode: model.remat policies")

MB = 2**20


def measure(config, mesh_config: dict) -> dict:
  """Per-device MB of the state parts and XLA's buffers for one mesh layout."""
  config = config.copy_and_resolve_references()
  config.mesh.update(mesh_config)
  mesh = sharding.make_mesh(config.mesh)
  method = registry.get_method(config)
  phases = method.phases(config)
  batch_spec = pipeline.batch_spec(config, method.make_views)
  optimizers, schedules = loop.make_optimizers(config, method, phases, batch_spec)
  rules = sharding.logical_rules(config)
  state = state_lib.abstract_train_state(
    method, config, optimizers, phases, batch_spec, mesh, rules
  )
  shardings = jax.tree.map(lambda x: x.sharding, state)
  batch_shardings = {k: sharding.batch_sharding(mesh) for k in batch_spec}
  batch = {
    k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_shardings[k])
    for k, v in batch_spec.items()
  }
  step = loop.jit_train_step(
    method, config, optimizers, schedules, phases, shardings, batch_shardings, mesh
  )
  mem = step.lower(state, batch).compile().memory_analysis()
  row = {
    "params MB": sharding.bytes_per_device(state.params) / MB,
    "opt MB": sharding.bytes_per_device(state.opt_state) / MB,
    "ema+bn MB": sharding.bytes_per_device(state.model_state) / MB,
  }
  row["state MB"] = row["params MB"] + row["opt MB"] + row["ema+bn MB"]
  if mem is not None:
    row.update(
      {
        "xla args MB": mem.argument_size_in_bytes / MB,
        "xla out MB": mem.output_size_in_bytes / MB,
        "xla temp MB": mem.temp_size_in_bytes / MB,
        "xla aliased MB": mem.alias_size_in_bytes / MB,
      }
    )
    # Donated state is aliased to the output: live ~ arguments + temporaries + non-aliased out.
    row["xla peak MB"] = (
      mem.argument_size_in_bytes
      + mem.temp_size_in_bytes
      + mem.output_size_in_bytes
      - mem.alias_size_in_bytes
    ) / MB
  row["total params M"] = state_lib.count_params(state.params) / 1e6
  row["saved for backward MB"] = saved_for_backward(method, config, state, batch, phases) / MB
  return row


def saved_for_backward(method, config, state, batch, phases) -> int:
  """Bytes the forward pass keeps for the backward pass (the residuals of `jax.vjp` of the
  loss, traced only), on the whole batch: the activation memory the remat policy and the
  compute dtype set, the same on every platform (XLA:CPU's buffer assignment shows neither)."""
  phase = phases[0][0]
  shapes = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)
  params, model_state, batch = jax.tree.map(shapes, (state.params, state.model_state, batch))

  def residuals(params, model_state, batch):
    loss = lambda p: method.loss_fn(
      p, model_state, batch, jax.random.PRNGKey(0), step=0, phase=phase, config=config
    )[0]
    return jax.tree.leaves(jax.vjp(loss, params)[1])

  leaves = jax.eval_shape(residuals, params, model_state, batch)
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in leaves)


def table(n: int) -> None:
  """One data-parallel row per (size, dtype, remat): what one device holds at `--batch / n`."""
  rows = []
  for size in _SIZES.value:
    spec = _CONFIG.value + ("," if ":" in _CONFIG.value else ":") + f"size={size}"
    for dtype in _DTYPES.value:
      for remat in _REMATS.value:
        config = config_utils.load_config(spec)
        config.batch_size, config.dtype = _BATCH.value, dtype
        config.data.num_workers = 0
        config.model.remat = remat
        r = measure(config, {"data": n, "fsdp": 1})
        rows.append(
          {
            "size": size,
            "params M": r["total params M"],
            "batch/device": _BATCH.value // n,
            "dtype": dtype,
            "remat": remat,
            "state MB": r["state MB"],
            "saved for backward MB": r["saved for backward MB"],
            "xla temp MB": r.get("xla temp MB", 0.0),
            "xla peak MB": r.get("xla peak MB", 0.0),
          }
        )
        print(rows[-1], flush=True)
  common.print_table(
    rows,
    {"config": _CONFIG.value, "devices": n, "rows": rows, "device": jax.devices()[0].device_kind},
  )


def main(argv):
  del argv
  if _SIZES.value:
    return table(jax.device_count())
  config = config_utils.load_config(_CONFIG.value)
  config.batch_size = _BATCH.value
  config.data.num_workers = 0
  if _DTYPE.value:
    config.dtype = _DTYPE.value
  config.dtype = encoders.compute_dtype(config).name  # "auto" -> what this device runs
  n = jax.device_count()
  layouts = [("data-parallel", {"data": n, "fsdp": 1}), ("fsdp", {"data": 1, "fsdp": n})]
  rows = []
  for name, mesh_config in layouts:
    rows.append(
      {
        "layout": name,
        "mesh": f"{mesh_config['data']}x{mesh_config['fsdp']}",
        **measure(config, mesh_config),
      }
    )
  if _REMAT.value:
    config.model.remat = "full"
    rows.append(
      {"layout": "fsdp+remat", "mesh": f"1x{n}", **measure(config, {"data": 1, "fsdp": n})}
    )
  dp, fsdp = rows[0], rows[1]
  figures = {
    "config": _CONFIG.value,
    "batch": config.batch_size,
    "devices": n,
    "device": jax.devices()[0].device_kind,
    "dtype": config.dtype,
    "params_millions": dp["total params M"],
    "per_device_MB": {
      r["layout"]: {k.replace(" MB", ""): round(v, 2) for k, v in r.items() if k.endswith("MB")}
      for r in rows
    },
    "fsdp_state_reduction": dp["state MB"] / fsdp["state MB"],
    "fsdp_params_plus_opt_reduction": (
      (dp["params MB"] + dp["opt MB"]) / (fsdp["params MB"] + fsdp["opt MB"])
    ),
  }
  if "xla args MB" in dp:
    figures["fsdp_xla_args_reduction"] = dp["xla args MB"] / fsdp["xla args MB"]
  common.print_table([{k: v for k, v in r.items() if k != "total params M"} for r in rows], figures)


if __name__ == "__main__":
  app.run(main)
