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
    (benchmarks/profile_step.py);
  - numerics on the device: the encoder's float32 forward (8 lines) against the same forward
    on the host CPU, max |difference| at the default matmul precision (TF32 on NVIDIA GPUs)
    and at "highest" (true fp32), next to the tokens' scale.
`--remat` (none | full | save_dots) and `--attention` (auto | xla | cudnn | explicit) override
`config.model`, to compare the step's variants on the device.
Then the figures as one JSON line. Put them in docs/benchmarks.md with the device name.
"""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Allocate on demand, so that the profile's child process (GPUs) finds the memory free.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("XLA_FLAGS", "")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from sslocr_jax import config_utils  # noqa: E402
from benchmarks import profile_step  # noqa: E402
from sslocr_jax.data import pipeline  # noqa: E402
from sslocr_jax.models import encoders  # noqa: E402
from sslocr_jax.train import loop  # noqa: E402
from sslocr_jax.train import sharding  # noqa: E402

_TINY = flags.DEFINE_bool("tiny", False, "CPU check: the smoke model, batch 8, a few steps")
_CONFIG = flags.DEFINE_string("config", "configs/dig.py:size=small", "config[:variant]")
_PER_DEVICE = flags.DEFINE_integer("per_device_batch", 256, "batch per device")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "compute dtype (params stay float32)")
_STEPS = flags.DEFINE_integer("steps", 20, "timed steps")
_WORKERS = flags.DEFINE_integer("workers", 8, "input pipeline worker processes")
_PIPELINE_SECONDS = flags.DEFINE_float("pipeline_seconds", 20.0, "input pipeline timing")
_REMAT = flags.DEFINE_string("remat", None, "config.model.remat override")
_ATTENTION = flags.DEFINE_string("attention", None, "config.model.attention override")
_NUMERICS = flags.DEFINE_bool("numerics", True, "device forward vs host CPU forward")
_PROFILE_ONLY = flags.DEFINE_bool(
  "profile_only", False, "internal: print the profile rows as JSON and exit (GPU subprocess)"
)

# XLA:GPU runs the step as CUDA graphs ("command buffers"); their trace events carry the graph,
# not the HLO ops inside it, so the profile is taken in a child process with them off (the
# timed step above keeps them: they are the default a user gets).
_NO_COMMAND_BUFFERS = "--xla_gpu_enable_command_buffer="


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


def numerics_vs_host(config) -> dict | None:
  """Max |device - host CPU| of the float32 encoder forward on 8 random lines; None where the
  default device is the CPU (nothing to compare)."""
  if jax.devices()[0].platform == "cpu":
    return None
  cfg = config.copy_and_resolve_references()
  cfg.dtype = "float32"
  encoder, _ = encoders.build(cfg)
  x = np.random.default_rng(0).uniform(-1, 1, (8, cfg.image_height, cfg.image_width, 3))
  x = x.astype(np.float32)
  cpu = jax.devices("cpu")[0]
  with jax.default_device(cpu):
    variables = encoder.init(jax.random.PRNGKey(0), x)
    # The explicit form is the CPU's; the device runs its own (`attention`, auto = xla).
    host = np.asarray(jax.jit(encoder.clone(attention="explicit").apply)(variables, x))
  on_device = jax.device_put(variables, jax.devices()[0])
  out = {"token_abs_max": float(np.abs(host).max())}
  for precision in ("default", "highest"):
    with jax.default_matmul_precision(precision):
      dev = np.asarray(jax.jit(encoder.apply)(on_device, jax.device_put(x, jax.devices()[0])))
    out[f"max_abs_diff_{precision}"] = float(np.abs(dev - host).max())
  return out


def profile_rows_in_child() -> list[dict]:
  """This script again with `--profile_only` and GPU command buffers off -> profile rows."""
  env = dict(os.environ, XLA_FLAGS=f"{os.environ['XLA_FLAGS']} {_NO_COMMAND_BUFFERS}")
  args = [a for a in sys.argv[1:] if not a.startswith("--profile_only")]
  out = subprocess.run(
    [sys.executable, os.path.abspath(__file__), *args, "--profile_only"],
    env=env,
    capture_output=True,
    text=True,
    check=True,
  ).stdout
  return json.loads(next(x for x in out.splitlines() if x.startswith("PROFILE_ROWS "))[13:])


def main(argv):
  del argv
  spec = "configs/dig.py:smoke" if _TINY.value else _CONFIG.value
  config = config_utils.load_config(spec)
  per_device = 4 if _TINY.value else _PER_DEVICE.value
  config.batch_size = per_device * jax.device_count()
  config.dtype = _DTYPE.value
  config.data.num_workers = 0 if _TINY.value else _WORKERS.value
  if _REMAT.value is not None:
    config.model.remat = _REMAT.value
  if _ATTENTION.value is not None:
    config.model.attention = _ATTENTION.value
  steps = 2 if _TINY.value else _STEPS.value
  seconds = 2.0 if _TINY.value else _PIPELINE_SECONDS.value
  device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
  on_gpu = jax.devices()[0].platform in ("gpu", "cuda")
  if not _PROFILE_ONLY.value:
    print(
      f"{spec}: batch {config.batch_size} ({per_device}/device), {config.dtype}, {device}, "
      f"remat {config.model.get('remat', 'none')}, "
      f"attention {config.model.get('attention', 'auto')}",
      flush=True,
    )

  rows = None  # the profile; on GPUs from a child process, run first (device memory)
  if on_gpu and not _PROFILE_ONLY.value and _NO_COMMAND_BUFFERS not in os.environ["XLA_FLAGS"]:
    try:
      rows = profile_rows_in_child()
    except subprocess.CalledProcessError as e:
      print(f"profile child failed ({e.returncode}): {e.stderr.strip().splitlines()[-1:]}")
      rows = []

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

  def traced_rows():
    return profile_step.breakdown(
      profile_step.trace_op_times(one_step, 1), profile_step.hlo_ops(compiled.as_text())
    )

  one_step()
  one_step()
  if _PROFILE_ONLY.value:
    print("PROFILE_ROWS " + json.dumps(traced_rows()))
    return
  sec = common.time_calls(one_step, steps)
  samples_per_sec = config.batch_size / sec
  mfu = common.step_mfu(config, samples_per_sec, xla_flops)
  peak_mem = peak_memory_bytes()

  host = pipeline_rate(config, s.method.make_views, seconds)
  if rows is None:
    rows = traced_rows()

  model = common.model_flops_per_sample(config, config.batch_size)
  numerics = numerics_vs_host(config) if _NUMERICS.value else None
  figures = {
    "config": spec,
    "device": device,
    "dtype": config.dtype,
    "remat": config.model.get("remat", "none"),
    "attention": config.model.get("attention", "auto"),
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
    "numerics_vs_host": numerics,
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
  if numerics:
    print(
      f"numerics: fp32 encoder forward vs host CPU, max |diff| {numerics['max_abs_diff_default']:.2e}"
      f" (default precision), {numerics['max_abs_diff_highest']:.2e} (highest); tokens up to "
      f"{numerics['token_abs_max']:.1f}"
    )
  print("profile (one traced step):")
  common.print_table(rows[:8] + rows[-1:], figures)


if __name__ == "__main__":
  app.run(main)
