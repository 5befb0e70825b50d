r"""Pretraining train-step throughput: images/s, FLOPs per image (XLA cost analysis), MFU.

GFLOPs/image are XLA's compiled cost (all ops, whole step: one device's program times the
device count); `model_gflops_per_image` is the analytic matmul count (benchmarks/common.py)
that MFU uses, against the per-device peak of `config.dtype` (TF32 for float32 on GPUs).

    python benchmarks/pretrain_throughput.py --config=configs/dig.py:size=tiny --batch=32

A sample is one original line with its views (for DiG: masked view + augmented view). Batches
are random arrays already on the device, so this measures the step alone; see
benchmarks/data_pipeline.py for the host side. Also times the encoder forward alone.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if __name__ == "__main__":  # re-run once with a host allocator that keeps memory (allocator.py)
  from sslocr_jax import allocator  # noqa: E402  # pylint: disable=g-import-not-at-top

  allocator.ensure()

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks import common  # noqa: E402
from sslocr_jax import config_utils  # noqa: E402
from sslocr_jax.data import pipeline  # noqa: E402
from sslocr_jax.train import loop  # noqa: E402
from sslocr_jax.train import sharding  # noqa: E402

_CONFIG = flags.DEFINE_string("config", "configs/dig.py:size=tiny", "config[:variant]")
_BATCH = flags.DEFINE_integer("batch", 32, "global batch size")
_STEPS = flags.DEFINE_integer("steps", 5, "timed steps (after 2 warm-up steps)")
_DTYPE = flags.DEFINE_string("dtype", None, "compute dtype override (float32|bfloat16)")


random_batch = common.random_batch


def main(argv):
  del argv
  config = config_utils.load_config(_CONFIG.value)
  config.batch_size = _BATCH.value
  config.data.num_workers = 0
  if _DTYPE.value:
    config.dtype = _DTYPE.value
  s = loop.setup(config)
  spec = pipeline.batch_spec(config, s.method.make_views)
  batch = sharding.global_batch(random_batch(spec), s.mesh)
  state = s.state
  step_flops = common.compiled_flops(s.train_step, state, batch)
  holder = {"state": state}

  def one_step():
    holder["state"], m = s.train_step(holder["state"], batch)
    jax.block_until_ready(m)

  for _ in range(2):
    one_step()
  sec = common.time_calls(one_step, _STEPS.value)
  images_per_sec = config.batch_size / sec

  rows = [
    {
      "what": "train step",
      "batch": config.batch_size,
      "sec/step": sec,
      "images/s": images_per_sec,
      "GFLOPs/image": (step_flops or 0) * jax.device_count() / config.batch_size / 1e9,
    }
  ]
  model_flops = common.model_flops_per_sample(config, config.batch_size)
  figures = {
    "images_per_sec": images_per_sec,
    "gflops_per_image": (
      step_flops * jax.device_count() / config.batch_size / 1e9 if step_flops else None
    ),
    "model_gflops_per_image": model_flops / 1e9 if model_flops else None,
    "device": jax.devices()[0].device_kind,
    "devices": jax.device_count(),
    "dtype": config.dtype,
    "config": _CONFIG.value,
  }
  mfu = common.step_mfu(config, images_per_sec, step_flops)
  if mfu is not None:
    figures["mfu"] = rows[0]["MFU"] = mfu

  encoder_images = next((k for k in ("image1", "image") if k in batch), None)
  if hasattr(s.method, "encoder_from_config") and encoder_images:
    enc = s.method.encoder_from_config(config)
    fwd = jax.jit(lambda p, x: enc.apply(p, x.astype(jnp.float32) / 127.5 - 1))
    params = {"params": holder["state"].params["encoder"]}
    stats = holder["state"].model_state.get("batch_stats", {}).get("encoder")
    if stats:  # BatchNorm encoders (ResNet) run in eval mode on their running statistics
      params["batch_stats"] = stats
    images = batch[encoder_images]
    fwd_flops = common.compiled_flops(fwd, params, images)  # XLA's count, all ops
    jax.block_until_ready(fwd(params, images))
    sec_f = common.time_calls(lambda: jax.block_until_ready(fwd(params, images)), _STEPS.value)
    fwd_gflops = (fwd_flops or 0) * jax.device_count() / config.batch_size / 1e9
    rows.append(
      {
        "what": "encoder forward",
        "batch": config.batch_size,
        "sec/step": sec_f,
        "images/s": config.batch_size / sec_f,
        "GFLOPs/image": fwd_gflops,
      }
    )
    figures["encoder_forward_images_per_sec"] = config.batch_size / sec_f
    figures["encoder_forward_gflops_per_image"] = fwd_gflops
    figures["encoder_forward_model_gflops_per_image"] = common.encoder_forward_flops(config) / 1e9
    if "MFU" in rows[0]:
      rows[1]["MFU"] = float("nan")
  common.print_table(rows, figures)


if __name__ == "__main__":
  app.run(main)
