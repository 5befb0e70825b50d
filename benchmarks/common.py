"""Shared benchmark helpers: timing, XLA cost analysis, peak FLOP/s, printing."""

import json
import os
import time

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Dense (no sparsity) peak FLOP/s of ONE device, by (device kind substring, compute dtype).
# float32 on NVIDIA GPUs is the TF32 tensor-core rate: XLA runs fp32 matmuls in TF32 there by
# default (jax_default_matmul_precision), so that is the ceiling the step is measured against.
# TPUs run fp32 matmuls as bf16 passes; their fp32 entry is left out (no honest single figure).
# Sources: NVIDIA H100/H200 and A100 datasheets (SXM), Google Cloud TPU system architecture pages.
PEAK_FLOPS = {
  ("H100", "bfloat16"): 989e12,
  ("H100", "float32"): 494.7e12,
  ("H200", "bfloat16"): 989e12,
  ("H200", "float32"): 494.7e12,
  ("A100", "bfloat16"): 312e12,
  ("A100", "float32"): 156e12,
  ("L4", "bfloat16"): 121e12,
  ("L4", "float32"): 60e12,
  ("TPU v4", "bfloat16"): 275e12,
  ("TPU v5 lite", "bfloat16"): 197e12,
  ("TPU v5p", "bfloat16"): 459e12,
  ("TPU v6", "bfloat16"): 918e12,
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


def peak_flops(dtype: str, device_kind: str | None = None) -> float | None:
  """Peak FLOP/s of ONE device of `device_kind` (default: this process's first device) for
  matmuls in `dtype`; None where unknown (CPUs: measure with `matmul_flops` instead)."""
  kind = device_kind if device_kind is not None else jax.devices()[0].device_kind
  for (name, dt), value in PEAK_FLOPS.items():
    if name in kind and dt == str(dtype):
      return value
  return None


def mfu(
  model_flops_per_sample: float, samples_per_sec: float, num_devices: int, peak_per_device: float
) -> float:
  """Model FLOPs utilisation: the model's FLOPs per second over the peak of ALL the devices
  that ran them (samples_per_sec is the global rate)."""
  return model_flops_per_sample * samples_per_sec / (num_devices * peak_per_device)


def step_mfu(
  config,
  samples_per_sec: float,
  compiled_per_device: float | None = None,
  num_devices: int | None = None,
  device_kind: str | None = None,
) -> float | None:
  """MFU of a train step running at `samples_per_sec` (global): the analytic model FLOPs
  where the method has a formula, else XLA's per-device compiled FLOPs (which also count
  elementwise ops) times the device count; over the per-device peak of `config.dtype` times
  the device count. None where the peak is unknown (CPUs)."""
  num_devices = num_devices or jax.device_count()
  peak = peak_flops(config.dtype, device_kind)
  per_sample = model_flops_per_sample(config, config.batch_size)
  if per_sample is None and compiled_per_device:
    per_sample = compiled_per_device * num_devices / config.batch_size
  if not peak or not per_sample:
    return None
  return mfu(per_sample, samples_per_sec, num_devices, peak)


# ----------------------------------------------------------------------------- model FLOPs
# Analytic matmul FLOPs (2 per multiply-add), the convention of MFU (PaLM appendix B) and of
# torch.utils.flop_counter: elementwise ops, softmax and norms are not counted. XLA's cost
# analysis counts those too and, under SPMD, gives one device's share of the program.
def dense_flops(dims, rows: int) -> int:
  """A chain of Linear layers dims[0] -> dims[1] -> ... applied to `rows` rows."""
  return sum(2 * rows * a * b for a, b in zip(dims[:-1], dims[1:]))


def vit_forward_flops(
  embed_dim: int, depth: int, num_tokens: int = 256, patch_pixels: int = 48, mlp_ratio: float = 4.0
) -> tuple[int, int]:
  """(patch embedding, blocks) matmul FLOPs of one image through the ViT encoder."""
  d, n = embed_dim, num_tokens
  block = (
    dense_flops([d, 3 * d], n)
    + dense_flops([d, d], n)
    + dense_flops([d, int(d * mlp_ratio), d], n)
    + 2 * 2 * n * n * d
  )  # qkv, proj, mlp, qk+pv
  return 2 * n * patch_pixels * d, depth * block


def encoder_forward_flops(config) -> int:
  """Matmul FLOPs of one image through `config.model`'s ViT encoder (0 for other encoders)."""
  m = config.model
  if m.get("name", "vit") != "vit":
    return 0
  patch, blocks = vit_forward_flops(m.embed_dim, m.depth, mlp_ratio=m.get("mlp_ratio", 4.0))
  return patch + blocks


def dig_step_flops(config, batch: int, mim_views: int = 1) -> int:
  """Matmul FLOPs per SAMPLE of one DiG train step (forward + backward, not the optimizer).

  Both views through the online encoder with backward (backward = 2x forward, except the
  patch embedding, whose input needs no gradient: 1x), both views through the momentum
  encoder (forward only), pix projectors on view 1's 256 tokens, projectors on both views'
  windows, predictor, MIM head on `mim_views` views (ours: 1; the release: 2, it decodes both
  and keeps view 1), and the two contrastive logit matrices (gradient for q only).
  `batch` (global) only enters through the contrastive logits (every window of the batch).
  """
  m, d, w = config.model, config.model.embed_dim, config.num_windows
  patch, blocks = vit_forward_flops(d, m.depth, mlp_ratio=m.get("mlp_ratio", 4.0))
  encoder = 2 * (3 * blocks + 2 * patch) + 2 * (blocks + patch)  # online fwd+bwd, momentum fwd
  pix = dense_flops([d, config.pix_hidden_dim, config.pix_hidden_dim, d], 256)
  proj = dense_flops([d, config.proj_hidden_dim, config.proj_hidden_dim, config.proj_dim], 2 * w)
  pred = dense_flops([config.proj_dim, config.pred_hidden_dim, config.proj_dim], 2 * w)
  mim = dense_flops([d, config.mim_hidden_dim, config.mim_hidden_dim, 48], 256 * mim_views)
  n = batch * w
  contrast = 2 * (2 * n * n * config.proj_dim) * 2 // batch  # 2 losses, fwd + dq
  return encoder + 4 * pix + 4 * proj + 3 * pred + 3 * mim + contrast


def model_flops_per_sample(config, batch: int) -> int | None:
  """Analytic train-step FLOPs per sample for the methods that have a formula (DiG)."""
  if config.get("method") == "dig" and config.model.get("name", "vit") == "vit":
    return dig_step_flops(config, batch)
  return None


def matmul_flops(n: int = 1024, dtype="float32", repeats: int = 5) -> float:
  """This machine's measured matmul rate (FLOP/s): best of `repeats` n x n x n jitted matmuls
  on the first device (the ceiling a CPU step can be compared with)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
  f = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(f(a, a))
  best = min(time_calls(lambda: jax.block_until_ready(f(a, a)), 1) for _ in range(repeats))
  return 2 * n**3 / best


def compiled_flops(jitted, *args) -> float | None:
  """FLOPs of one call from XLA's cost analysis (None where the backend gives none).

  Under SPMD this is ONE device's program (its share of a sharded batch), matmuls and
  elementwise ops together: multiply by the device count for the whole step."""
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


def synthetic_lines(n: int, h: int, w: int):
  """n synthetic lines (seed 123) resized to h x w (uint8 [n, h, w, 3]) and their labels."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from sslocr_jax.data import augment  # pylint: disable=g-import-not-at-top
  from sslocr_jax.data import sources  # pylint: disable=g-import-not-at-top

  src = sources.SyntheticSource(n, seed=123)
  recs = [src[i] for i in range(n)]
  return np.stack([augment.resize(r["image"], h, w) for r in recs]), [r["label"] for r in recs]
