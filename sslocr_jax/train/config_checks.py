"""Checks of a run's config when it starts, before anything in the workdir is touched.

    check_values(config)              out-of-range values (mask_ratio=1.5, batch_size=0, ...)
                                      and an `init_from` that does not exist
    check_batch_divides(config, n)    the global batch over the n data-parallel devices
    check_resume(config, workdir)     a rerun on a workdir with checkpoints: only resume-safe
                                      fields may differ from its config.json

Each failure is an `errors.UserError` with a one-line message naming the field, its value and
what is allowed (the CLI prints it and exits with status 2).

Resume-safe fields (`RESUME_SAFE`) change how long the run goes, what it logs and where it
runs, never the train state or the data stream: `total_steps` (train longer), `schedule_steps`,
the logging / checkpoint / evaluation intervals, early stopping (`early_stop_*`), the
representation probe (`probe_every`, `probe.*`: it only reads the state), the mesh and
sharding (orbax reshards on restore), the compute `dtype`, `grad_accum_steps`, host data
workers, the validation set, `init_from` (only read by a fresh run) and `model.remat`
(recomputation, not shapes). Any other difference (the model, method, batch size, data,
charset, optimizer, ...) is refused: the restore would fail on shapes, or resume a different
run without saying so. Fields only on one side (a config.json written by an older version of
the code) are not compared.
"""

import fnmatch
import json
import math

from etils import epath

from sslocr_jax import errors

RESUME_SAFE = (
  "total_steps",
  "schedule_steps",
  "log_every",
  "checkpoint_every",
  "keep_checkpoints",
  "async_checkpoints",
  "viz_every",
  "eval_every",
  "eval_batch_size",
  "best_metric",
  "early_stop_*",
  "distributed",
  "init_from",
  "dtype",
  "grad_accum_steps",
  "mesh.*",
  "sharding.*",
  "data.num_workers",
  "data.num_threads",
  "data.prefetch",
  "val_data.*",
  "model.remat*",
  "profile*",
  "stop_check_seconds",
  "probe_every",
  "probe.*",
)


# (field, lowest, lowest allowed?, highest, highest allowed?, integer?)
_RANGES = (
  ("mask_ratio", 0.0, True, 1.0, False, False),
  ("batch_size", 1, True, math.inf, False, True),
  ("eval_batch_size", 0, True, math.inf, False, True),  # 0 = batch_size
  ("total_steps", 1, True, math.inf, False, True),
  ("schedule_steps", 0, True, math.inf, False, True),  # 0 = total_steps
  ("log_every", 1, True, math.inf, False, True),
  ("checkpoint_every", 0, True, math.inf, False, True),
  ("keep_checkpoints", 1, True, math.inf, False, True),
  ("eval_every", 0, True, math.inf, False, True),
  ("early_stop_patience", 0, True, math.inf, False, True),
  ("early_stop_min_steps", 0, True, math.inf, False, True),
  ("viz_every", 0, True, math.inf, False, True),
  ("grad_accum_steps", 1, True, math.inf, False, True),
  ("num_windows", 1, True, math.inf, False, True),
  ("max_len", 1, True, math.inf, False, True),
  ("temperature", 0.0, False, math.inf, False, False),
  ("label_smoothing", 0.0, True, 1.0, False, False),
  ("data.fraction", 0.0, False, 1.0, True, False),
  ("val_data.fraction", 0.0, False, 1.0, True, False),
  ("data.num_samples", 1, True, math.inf, False, True),
  ("val_data.num_samples", 1, True, math.inf, False, True),
  ("probe.data.num_samples", 1, True, math.inf, False, True),
  ("optim.warmup_steps", 0, True, math.inf, False, True),
  ("optim.warmup_fraction", 0.0, True, 1.0, False, False),
  ("probe_every", 0, True, math.inf, False, True),  # 0 = no probe
  ("probe.train_samples", 1, True, math.inf, False, True),
  ("probe.eval_samples", 1, True, math.inf, False, True),
  ("probe.steps", 1, True, math.inf, False, True),
  ("probe.batch_size", 1, True, math.inf, False, True),
  ("probe.lr", 0.0, False, math.inf, False, False),
  ("probe.max_len", 0, True, math.inf, False, True),  # 0 = half the encoder's frames
  ("probe.image_width", 0, True, math.inf, False, True),  # 0 = image_width
  ("probe.encode_batch_size", 1, True, math.inf, False, True),
)


def _get(config, dotted: str):
  node = config
  for key in dotted.split("."):
    if not hasattr(node, "keys") or key not in node:
      return None
    node = node[key]
  return node


def _range_text(lo, lo_in, hi, hi_in, integer) -> str:
  kind = "an integer" if integer else "a number"
  if hi == math.inf:
    return f"{kind} >= {lo}" if lo_in else f"{kind} > {lo}"
  return f"{kind} in {'[' if lo_in else '('}{lo}, {hi}{']' if hi_in else ')'}"


def check_values(config) -> None:
  """Raises UserError for the first field out of its range (fields the config lacks are
  skipped: each method has its own)."""
  for field, lo, lo_in, hi, hi_in, integer in _RANGES:
    value = _get(config, field)
    if value is None or isinstance(value, bool):
      continue
    if field.endswith("num_samples") and _get(config, field.rsplit(".", 1)[0] + ".source") not in (
      None,
      "synthetic",
    ):
      continue  # only the synthetic source reads num_samples
    allowed = _range_text(lo, lo_in, hi, hi_in, integer)
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value >= lo if lo_in else value > lo) and (value <= hi if hi_in else value < hi)
    ok = ok and (not integer or float(value).is_integer())
    if not ok:
      raise errors.UserError(f"config.{field}={value!r} is out of range; allowed: {allowed}")
  check_init_from(config)


def check_init_from(config) -> None:
  """`init_from` names something that exists (checked before minutes of compiling)."""
  path = config.get("init_from", "") or ""
  if path and not epath.Path(path).exists():
    raise errors.MissingPath(f"config.init_from={path!r} does not exist")


def check_batch_divides(config, num_devices: int, mesh_shape=None) -> None:
  """The global batch is split over every device of the (data, fsdp) mesh."""
  batch = int(config.batch_size)
  if batch % num_devices:
    mesh = f" (mesh {dict(mesh_shape)})" if mesh_shape else ""
    raise errors.UserError(
      f"config.batch_size={batch} is not divisible by the {num_devices} data-parallel "
      f"devices{mesh}; allowed: a multiple of {num_devices}"
    )


def _flat(tree, prefix="") -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _plain(config) -> dict:
  """The config as config.json holds it (tuples become lists)."""
  return (
    json.loads(config.to_json_best_effort())
    if hasattr(config, "to_json_best_effort")
    else json.loads(json.dumps(config))
  )


def config_differences(stored: dict, config) -> list[tuple[str, object, object]]:
  """[(field, stored value, new value)] of the fields that differ and are not resume-safe."""
  old, new = _flat(_plain(stored)), _flat(_plain(config))
  out = []
  for field in sorted(set(old) & set(new)):
    if old[field] != new[field] and not any(fnmatch.fnmatchcase(field, p) for p in RESUME_SAFE):
      out.append((field, old[field], new[field]))
  return out


def check_resume(config, workdir, has_checkpoint: bool) -> None:
  """Refuses a rerun whose config changes a field that is not resume-safe, before the workdir
  is touched. `workdir`: an epath.Path; `has_checkpoint`: whether it holds a step to resume."""
  path = workdir / "config.json"
  if not has_checkpoint or not path.exists():
    return
  try:
    stored = json.loads(path.read_text())
  except ValueError as e:
    raise errors.UserError(
      f"{path} is not valid JSON ({e}); it was written by the run that "
      "made the checkpoints: restore it, or use a new --workdir"
    ) from None
  diffs = config_differences(stored, config)
  if diffs:
    shown = ", ".join(f"{f} ({_short(a)} -> {_short(b)})" for f, a, b in diffs[:8])
    more = f" and {len(diffs) - 8} more" if len(diffs) > 8 else ""
    raise errors.UserError(
      f"{workdir} holds a run with another config; these fields cannot change on resume: "
      f"{shown}{more}. Use a new --workdir, or the stored values (config.json); the fields "
      f"that may change on resume are {', '.join(RESUME_SAFE)}"
    )


def _short(value) -> str:
  text = json.dumps(value)
  return text if len(text) <= 40 else text[:37] + "..."
