r"""Host input pipeline vs device step: is the pipeline ever the bottleneck?

    python benchmarks/scale_throughput.py [--configs=configs/dig.py:cpu,configs/seqclr.py:cpu]
        [--workers=2] [--batch=N] [--dtype=bfloat16] [--seconds=10] [--steps=5]

For each method config (default: every pretraining method's `cpu` variant), three rates:
  host        samples/s of the real grain pipeline alone (decode/render, method views, masks,
              batching, `--workers` processes), what the hosts can feed, in steady state
              (the batches buffered at start-up are drained before timing);
  device      images/s of the jitted train step alone on random batches already on the device,
              with XLA's FLOPs and MFU where the device's peak is known (benchmarks/common.py);
  end-to-end  images/s of the loop's inner part: next(pipeline) -> global batch -> step.
host / device >= 1 means the pipeline keeps up. On a CPU, host workers and the "device" share
the same cores, so end-to-end is below both; on an accelerator it should equal `device`.
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
from sslocr_jax.data import pipeline  # noqa: E402
from sslocr_jax.models import encoders  # noqa: E402
from sslocr_jax.train import loop  # noqa: E402
from sslocr_jax.train import sharding  # noqa: E402

METHOD_CONFIGS = ("dig", "seqclr", "siman")
_CONFIGS = flags.DEFINE_list(
  "configs",
  None,
  "config[:variant] list (default: configs/<method>.py:cpu for each of "
  f"{', '.join(METHOD_CONFIGS)} that exists)",
)
_WORKERS = flags.DEFINE_integer("workers", 2, "grain worker processes (config.data.num_workers)")
_BATCH = flags.DEFINE_integer("batch", None, "global batch size override")
_DTYPE = flags.DEFINE_string("dtype", None, "compute dtype override (float32|bfloat16)")
_SECONDS = flags.DEFINE_float("seconds", 10.0, "seconds of host pipeline measurement")
_STEPS = flags.DEFINE_integer("steps", 5, "timed steps (device and end-to-end)")


def buffered_batches(config) -> int:
  """Batches the pipeline may hold ready before the clock starts: each worker's buffer (2,
  `pipeline.make_dataset`) plus the one in flight. Timing fewer than this reads only those."""
  return 2 * pipeline.resolve_num_workers(config.data) + 1


def host_rate(config, make_views, seconds: float) -> float:
  """Samples/s of the grain pipeline alone, in steady state: the batches buffered during
  worker start-up are drained first, then at least `seconds` and 4x that many batches are
  timed. The workers are closed before returning (they would compete with the next timing)."""
  it = iter(pipeline.make_dataset(config, make_views))
  try:
    for _ in range(buffered_batches(config)):
      next(it)
    n, b, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or b < 4 * buffered_batches(config):
      n += len(next(iter(next(it).values())))
      b += 1
    return n / (time.perf_counter() - t0)
  finally:
    it.close()


def device_rate(s, config, steps: int) -> tuple[float, float | None]:
  """(images/s, FLOPs per step) of the jitted step on a random batch already on the device."""
  spec = pipeline.batch_spec(config, s.method.make_views)
  batch = sharding.global_batch(common.random_batch(spec), s.mesh)
  flops = common.compiled_flops(s.train_step, s.state, batch)
  holder = {"state": s.state}

  def one_step():
    holder["state"], m = s.train_step(holder["state"], batch)
    jax.block_until_ready(m)

  one_step()
  one_step()
  sec = common.time_calls(one_step, steps)
  s.state = holder["state"]  # the old one was donated
  return config.batch_size / sec, flops


def end_to_end_rate(s, config, steps: int) -> float:
  """Images/s of pipeline -> global batch -> step, as in the train loop: at least `steps` and
  4x the buffered batches after one warm-up step, so the pipeline's own speed shows."""
  it = iter(pipeline.make_dataset(config, s.method.make_views))
  try:
    state = s.state
    state, m = s.train_step(state, sharding.global_batch(next(it), s.mesh))
    jax.block_until_ready(m)
    n = max(steps, 4 * buffered_batches(config))
    t0 = time.perf_counter()
    for _ in range(n):
      state, m = s.train_step(state, sharding.global_batch(next(it), s.mesh))
    jax.block_until_ready(m)
    s.state = state
    return n * config.batch_size / (time.perf_counter() - t0)
  finally:
    it.close()


def default_configs() -> list[str]:
  return [
    f"configs/{m}.py:cpu"
    for m in METHOD_CONFIGS
    if os.path.exists(os.path.join(common.ROOT, "configs", f"{m}.py"))
  ]


def main(argv):
  del argv
  rows, figures = (
    [],
    {
      "device": jax.devices()[0].device_kind,
      "devices": jax.device_count(),
      "cpu_count": os.cpu_count(),
      "workers": _WORKERS.value,
      "methods": {},
    },
  )
  for spec in _CONFIGS.value or default_configs():
    config = config_utils.load_config(spec)
    config.data.num_workers = _WORKERS.value
    if _BATCH.value:
      config.batch_size = _BATCH.value
    if _DTYPE.value:
      config.dtype = _DTYPE.value
    config.dtype = encoders.compute_dtype(config).name  # "auto" -> what runs (for the peak)
    s = loop.setup(config)
    host = host_rate(config, s.method.make_views, _SECONDS.value)
    device, flops = device_rate(s, config, _STEPS.value)
    e2e = end_to_end_rate(s, config, _STEPS.value)
    mfu = common.step_mfu(config, device, flops)
    rows.append(
      {
        "config": spec,
        "batch": config.batch_size,
        "dtype": config.dtype,
        "host samples/s": host,
        "device images/s": device,
        "end-to-end images/s": e2e,
        "host/device": host / device,
        "GFLOPs/image": (flops or 0) * jax.device_count() / config.batch_size / 1e9,
        "MFU": mfu if mfu is not None else float("nan"),
      }
    )
    figures["methods"][spec] = {
      "batch": config.batch_size,
      "dtype": config.dtype,
      "host_samples_per_sec": host,
      "device_images_per_sec": device,
      "end_to_end_images_per_sec": e2e,
      "host_over_device": host / device,
      "pipeline_bottleneck": host < device,
      "gflops_per_image": (flops * jax.device_count() / config.batch_size / 1e9 if flops else None),
      "mfu": mfu,
    }
  common.print_table(rows, figures)


if __name__ == "__main__":
  app.run(main)
