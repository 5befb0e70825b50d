"""Shared benchmark helpers: timing, XLA cost analysis, peak FLOP/s, printing."""

import json
import os
import time

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Dense peak FLOP/s per device by (device kind substring, dtype); used for MFU.
PEAK_FLOPS = {
    ("H100", "bfloat16"): 989e12, ("H100", "float32"): 67e12,
    ("H200", "bfloat16"): 989e12, ("H200", "float32"): 67e12,
    ("A100", "bfloat16"): 312e12, ("A100", "float32"): 19.5e12,
    ("TPU v4", "bfloat16"): 275e12, ("TPU v5 lite", "bfloat16"): 197e12,
    ("TPU v5p", "bfloat16"): 459e12,
}


def random_batch(spec: dict, seed: int = 0) -> dict:
  """Random numpy arrays shaped like a batch spec ({name: ShapeDtypeStruct}): masks ~70% True."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  out = {}
  for k, s in spec.items():
    if s.dtype == np.bool_:
      out[k] = rng.random(s.shape) < 0.7
    elif s.dtype == np.uint8:
      out[k] = rng.integers(0, 256, s.shape, dtype=np.uint8)
    elif np.issubdtype(s.dtype, np.integer):
      out[k] = rng.integers(0, 10, s.shape).astype(s.dtype)
    else:
      out[k] = rng.normal(size=s.shape).astype(s.dtype)
  return out


def peak_flops(dtype: str) -> float | None:
  kind = jax.devices()[0].device_kind
  for (name, dt), value in PEAK_FLOPS.items():
    if name in kind and dt == dtype:
      return value * jax.device_count()
  return None


def compiled_flops(jitted, *args) -> float | None:
  """FLOPs of one call from XLA's cost analysis (None where the backend gives none)."""
  try:
    cost = jitted.lower(*args).compile().cost_analysis()
    if isinstance(cost, list):
      cost = cost[0]
    return float(cost.get("flops", 0.0)) or None
  except Exception:  # pylint: disable=broad-except
    return None


def time_calls(fn, n: int) -> float:
  """Seconds per call of `fn()` (which must block until its result is ready)."""
  t = time.perf_counter()
  for _ in range(n):
    fn()
  return (time.perf_counter() - t) / n


def print_table(rows: list[dict], figures: dict) -> None:
  """A readable table, then the figures as one JSON object on the last line."""
  if rows:
    keys = list(rows[0])
    widths = [max(len(k), *(len(_fmt(r[k])) for r in rows)) for k in keys]
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths)))
    for r in rows:
      print("  ".join(_fmt(r[k]).ljust(w) for k, w in zip(keys, widths)))
  print(json.dumps(figures), flush=True)


def _fmt(v) -> str:
  return f"{v:.4g}" if isinstance(v, float) else str(v)
