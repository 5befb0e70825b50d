r"""Our DiG train step against the official PyTorch model, side by side in one sitting.

    python benchmarks/vs_official.py [--sizes=tiny,small] [--batch=32] [--threads=2] [--reps=3]

For each size: whole train steps (fp32, AdamW, batch `--batch`) of ours (`configs/dig.py`,
jitted) and of the official model restated in benchmarks/dig_torch.py, then the encoder
forward alone (both views' worth of images, inference). Runs alternate, ours / official /
ours / ..., `--reps` times each, so a change in the machine's load hits both; the table has
medians and the ratio ours / official (> 1 = ours faster). Also printed: this machine's
measured fp32 matmul rate (1024^3, JAX and torch), the analytic model GFLOPs per sample (the
same count for both: benchmarks/common.py, checked against torch's FLOP counter in
tests/test_benchmarks.py), XLA's compiled GFLOPs per sample, the achieved GFLOP/s of our step
by each count, and the load average. Needs torch (`pip install torch==2.13.0`, CPU build).

Threads: torch.set_num_threads(--threads) and OMP_NUM_THREADS; XLA:CPU runs one thread per
core, so give `--threads` = the core count (2 on the development machine) for equal terms.
Run time: each side runs 1 warm-up + `--reps` x `--steps` steps and 1 + `--reps` x
`--forward_calls` forwards per size; with the defaults (3, 1, 1) tiny and small together
should take about 7 minutes on an idle 2-core machine (an estimate from the issue's idle rates:
ViT-Small is ~3.2 TFLOP per step of batch 32, ~25 s a step on each side, plus compilation).
The official step decodes both views with its MIM head (ours: view 1 only), 0.25 GFLOP per
sample more at Tiny; its GFLOP/s column uses its own count.
"""

import os
import statistics
import sys

_THREADS = int(next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--threads=")), 2))
os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))
os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "")
  + f" --xla_cpu_multi_thread_eigen={'true' if _THREADS > 1 else 'false'}"
)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if __name__ == "__main__":  # re-run once with a host allocator that keeps memory (allocator.py)
  from sslocr_jax import allocator  # noqa: E402  # pylint: disable=g-import-not-at-top

  allocator.ensure()

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from sslocr_jax import config_utils  # noqa: E402
from sslocr_jax.data import pipeline  # noqa: E402
from sslocr_jax.train import loop  # noqa: E402
from sslocr_jax.train import sharding  # noqa: E402

_SIZES = flags.DEFINE_list("sizes", ["tiny", "small"], "ViT sizes")
_BATCH = flags.DEFINE_integer("batch", 32, "batch size")
flags.DEFINE_integer("threads", 2, "threads for both frameworks (read before JAX starts)")
_REPS = flags.DEFINE_integer("reps", 3, "alternating repetitions")
_STEPS = flags.DEFINE_integer("steps", 1, "train steps per timed repetition")
_FWD = flags.DEFINE_integer("forward_calls", 1, "encoder forward calls per repetition")
_CONFIG = flags.DEFINE_string("config", "configs/dig.py", "our DiG config (size= is appended)")


def torch_matmul_flops(n: int = 1024, repeats: int = 5) -> float:
  import torch  # pylint: disable=g-import-not-at-top

  a = torch.randn(n, n)
  a @ a
  return 2 * n**3 / min(common.time_calls(lambda: a @ a, 1) for _ in range(repeats))


def ours(spec: str, batch_size: int):
  """(step(), forward(), XLA GFLOPs per sample, config) for our jitted DiG step."""
  config = config_utils.load_config(spec)
  config.batch_size, config.data.num_workers = batch_size, 0
  s = loop.setup(config, mesh=sharding.make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1]))
  data = pipeline.batch_spec(config, s.method.make_views)
  batch = sharding.global_batch(common.random_batch(data), s.mesh)
  compiled = common.compiled_flops(s.train_step, s.state, batch)
  holder = {"state": s.state}

  def step():
    holder["state"], m = s.train_step(holder["state"], batch)
    jax.block_until_ready(m)

  enc = s.method.encoder_from_config(config)
  images = jnp.concatenate([batch["image1"], batch["image2"]])
  fwd = jax.jit(lambda p, x: enc.apply({"params": p}, x.astype(jnp.float32) / 127.5 - 1))

  def forward():
    jax.block_until_ready(fwd(holder["state"].params["encoder"], images))

  return step, forward, (compiled or 0) / batch_size / 1e9, config


def official(config, batch_size: int):
  """(step(), forward()) for the official model restated in PyTorch, sized as `config`."""
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import dig_torch  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  model = dig_torch.DiG.from_config(config)
  train = dig_torch.make_step(model)
  images, aug, mask = dig_torch.example_inputs(batch_size)
  both = torch.cat([images, aug])

  def forward():
    with torch.no_grad():
      model.encoder(both)

  return lambda: train(images, aug, mask), forward, model


def alternate(fns: dict, calls: int, reps: int) -> dict:
  """{name: median seconds per call}, running the functions in turn `reps` times."""
  for fn in fns.values():  # warm-up (compilation, allocator)
    fn()
  times = {k: [] for k in fns}
  for _ in range(reps):
    for k, fn in fns.items():
      times[k].append(common.time_calls(fn, calls))
  return {k: statistics.median(v) for k, v in times.items()}


def main(argv):
  del argv
  import torch  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(_THREADS)
  load0 = os.getloadavg()
  jax_mm, torch_mm = common.matmul_flops(), torch_matmul_flops()
  rows, figures = (
    [],
    {
      "threads": _THREADS,
      "batch": _BATCH.value,
      "jax_matmul_gflops": jax_mm / 1e9,
      "torch_matmul_gflops": torch_mm / 1e9,
    },
  )
  for size in _SIZES.value:
    step, forward, xla_gflops, config = ours(f"{_CONFIG.value}:size={size}", _BATCH.value)
    t_step, t_forward, _ = official(config, _BATCH.value)
    model_gflops = common.dig_step_flops(config, _BATCH.value) / 1e9
    official_gflops = common.dig_step_flops(config, _BATCH.value, mim_views=2) / 1e9
    steps = alternate({"ours": step, "official": t_step}, _STEPS.value, _REPS.value)
    fwds = alternate({"ours": forward, "official": t_forward}, _FWD.value, _REPS.value)
    b, n_fwd = _BATCH.value, 2 * _BATCH.value
    fwd_gflops = common.encoder_forward_flops(config) / 1e9
    for what, sec, per, gf, gf_off in [
      ("train step", steps, b, model_gflops, official_gflops),
      ("encoder forward", fwds, n_fwd, fwd_gflops, fwd_gflops),
    ]:
      rows.append(
        {
          "size": size,
          "what": what,
          "ours /s": per / sec["ours"],
          "official /s": per / sec["official"],
          "ours/official": sec["official"] / sec["ours"],
          "GFLOP/sample": gf,
          "ours GFLOP/s": gf * per / sec["ours"],
          "official GFLOP/s": gf_off * per / sec["official"],
        }
      )
    achieved_xla = xla_gflops * b / steps["ours"]
    figures[size] = {
      "step_ratio": steps["official"] / steps["ours"],
      "forward_ratio": fwds["official"] / fwds["ours"],
      "ours_samples_per_sec": b / steps["ours"],
      "official_samples_per_sec": b / steps["official"],
      "model_gflops_per_sample": model_gflops,
      "xla_gflops_per_sample": xla_gflops,
      "ours_achieved_gflops_xla": achieved_xla,
      "ours_achieved_over_matmul_rate": achieved_xla / (jax_mm / 1e9),
    }
  figures["load_avg_before"], figures["load_avg_after"] = load0, os.getloadavg()
  print(
    f"fp32 matmul 1024^3 on this machine: JAX {jax_mm / 1e9:.1f} GFLOP/s, torch "
    f"{torch_mm / 1e9:.1f} GFLOP/s; load average {load0[0]:.1f} -> {os.getloadavg()[0]:.1f}"
  )
  for size in _SIZES.value:
    f = figures[size]
    print(
      f"{size}: our step achieves {f['ours_achieved_gflops_xla']:.1f} GFLOP/s by XLA's cost "
      f"analysis ({f['xla_gflops_per_sample']:.2f} GFLOP/sample) = "
      f"{100 * f['ours_achieved_over_matmul_rate']:.0f}% of the measured matmul rate"
    )
  common.print_table(rows, figures)


if __name__ == "__main__":
  np.set_printoptions(precision=3)
  app.run(main)
