r"""One command for a GPU / TPU at hand: the DiG ViT-Small step in bf16, all figures, < 5 min.

    python benchmarks/accelerator_check.py                  # GPU / TPU: ViT-Small, bf16
    python benchmarks/accelerator_check.py --tiny           # any CPU: smoke model, a minute

Prints, for `configs/dig.py` (ViT-Small, params float32, compute `--dtype`) at a realistic batch
(`--per_device_batch` x the device count, random batches already on the devices):
  - compile seconds, step seconds, samples/s;
  - MFU: analytic model FLOPs per sample (benchmarks/common.py, ~100 GFLOP for ViT-Small)
    x samples/s over (device count x the per-device peak of the dtype: bf16, or TF32 for
    fp32 on GPUs); None on CPUs (no peak table entry);
  - peak device memory (`memory_stats()`, GPU/TPU) and XLA's compiled memory analysis;
  - the input pipeline's samples/s (the real grain pipeline: synthetic lines, DiG views,
    `--workers` processes) against the samples/s the step consumes;
  - a short profile: the step's time by layer group from a jax.profiler trace
    (benchmarks/profile_step.py).
Then the figures as one JSON line. Put them in docs/benchmarks.md with the device name.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402

from benchmarks import common  # noqa: E402
from sslocr_jax import config_utils  # noqa: E402
from benchmarks import profile_step  # noqa: E402
from sslocr_jax.data import pipeline  # noqa: E402
from sslocr_jax.train import loop  # noqa: E402
from sslocr_jax.train import sharding  # noqa: E402

_TINY = flags.DEFINE_bool("tiny", False, "CPU check: the smoke model, batch 8, a few steps")
_CONFIG = flags.DEFINE_string("config", "configs/dig.py:size=small", "config[:variant]")
_PER_DEVICE = flags.DEFINE_integer("per_device_batch", 256, "batch per device")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "compute dtype (params stay float32)")
_STEPS = flags.DEFINE_integer("steps", 20, "timed steps")
_WORKERS = flags.DEFINE_integer("workers", 8, "input pipeline worker processes")
_PIPELINE_SECONDS = flags.DEFINE_float("pipeline_seconds", 20.0, "input pipeline timing")


def pipeline_rate(config, make_views, seconds: float) -> float:
  """Samples/s of the host input pipeline alone (worker start-up excluded)."""
  it = iter(pipeline.make_dataset(config, make_views))
  next(it)
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    n += len(next(iter(next(it).values())))
  return n / (time.perf_counter() - t0)


def peak_memory_bytes() -> int | None:
  """Largest `peak_bytes_in_use` over the local devices (None where the backend has none)."""
  peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in jax.local_devices()]
  peaks = [p for p in peaks if p is not None]
  return max(peaks) if peaks else None


def main(argv):
  del argv
  spec = "configs/dig.py:smoke" if _TINY.value else _CONFIG.value
  config = config_utils.load_config(spec)
  per_device = 4 if _TINY.value else _PER_DEVICE.value
  config.batch_size = per_device * jax.device_count()
  config.dtype = _DTYPE.value
  config.data.num_workers = 0 if _TINY.value else _WORKERS.value
  steps = 2 if _TINY.value else _STEPS.value
  seconds = 2.0 if _TINY.value else _PIPELINE_SECONDS.value
  device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
  print(
    f"{spec}: batch {config.batch_size} ({per_device}/device), {config.dtype}, {device}", flush=True
  )

  t0 = time.perf_counter()
  s = loop.setup(config)
  data_spec = pipeline.batch_spec(config, s.method.make_views)
  batch = sharding.global_batch(common.random_batch(data_spec), s.mesh)
  compiled = s.train_step.lower(s.state, batch).compile()
  compile_s = time.perf_counter() - t0
  xla_flops = common.compiled_flops(s.train_step, s.state, batch)
  mem = compiled.memory_analysis()
  holder = {"state": s.state}

  def one_step():
    holder["state"], m = s.train_step(holder["state"], batch)
    jax.block_until_ready(m)

  one_step()
  one_step()
  sec = common.time_calls(one_step, steps)
  samples_per_sec = config.batch_size / sec
  mfu = common.step_mfu(config, samples_per_sec, xla_flops)
  peak_mem = peak_memory_bytes()

  host = pipeline_rate(config, s.method.make_views, seconds)
  rows = profile_step.breakdown(
    profile_step.trace_op_times(one_step, 1), profile_step.hlo_ops(compiled.as_text())
  )

  model = common.model_flops_per_sample(config, config.batch_size)
  figures = {
    "config": spec,
    "device": device,
    "dtype": config.dtype,
    "batch": config.batch_size,
    "compile_s": compile_s,
    "step_s": sec,
    "samples_per_sec": samples_per_sec,
    "model_gflops_per_sample": model / 1e9 if model else None,
    "xla_gflops_per_sample": (
      xla_flops * jax.device_count() / config.batch_size / 1e9 if xla_flops else None
    ),
    "peak_flops_per_device": common.peak_flops(config.dtype),
    "mfu": mfu,
    "peak_memory_gb": peak_mem / 1e9 if peak_mem else None,
    "xla_temp_gb": getattr(mem, "temp_size_in_bytes", 0) / 1e9 if mem else None,
    "xla_argument_gb": getattr(mem, "argument_size_in_bytes", 0) / 1e9 if mem else None,
    "pipeline_samples_per_sec": host,
    "pipeline_workers": config.data.num_workers,
    "pipeline_over_step": host / samples_per_sec,
    "profile_top": {r["group"]: round(r["share"], 3) for r in rows[:6]},
  }
  print(
    f"step: {sec * 1e3:.1f} ms, {samples_per_sec:.1f} samples/s, MFU "
    f"{'n/a (no peak for this device)' if mfu is None else f'{100 * mfu:.1f}%'}; "
    f"peak memory {'n/a' if peak_mem is None else f'{peak_mem / 1e9:.2f} GB'}"
  )
  print(
    f"input pipeline: {host:.0f} samples/s with {config.data.num_workers} workers = "
    f"{host / samples_per_sec:.2f}x what the step consumes"
    f"{'' if host >= samples_per_sec else '  <- the pipeline is the bottleneck'}"
  )
  print("profile (one traced step):")
  common.print_table(rows[:8] + rows[-1:], figures)


if __name__ == "__main__":
  app.run(main)
