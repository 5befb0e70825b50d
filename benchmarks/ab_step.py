r"""A/B of a train step: the working tree's models/vit.py against a git revision's, one process.

    python benchmarks/ab_step.py --config=configs/dig.py:size=tiny --batch=32 --against=HEAD~1

Builds the same jitted step (and the encoder forward) twice: A with `models/vit.py` as it is at
`--against` (read with `git show`, loaded in place of the module while A is traced and
compiled), B with the working tree's. The param trees must match (same names and shapes), so
both run on one state. The calls alternate A B A B ... `--reps` times and the medians of wall
time and of process CPU time are printed with B's speed-up over A. On a machine shared with
other jobs the CPU-time ratio is the steadier one (a descheduled process accrues no CPU time);
on an idle machine read the wall ratio.
"""

import contextlib
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time

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

MODULE = "sslocr_jax.models.vit"


def module_at(revision: str):
  """models/vit.py as it is at `revision`, loaded as a module (not registered)."""
  text = subprocess.run(
    ["git", "show", f"{revision}:sslocr_jax/models/vit.py"],
    cwd=common.ROOT,
    check=True,
    capture_output=True,
    text=True,
  ).stdout
  path = os.path.join(tempfile.mkdtemp(prefix="ab_step_"), "vit_a.py")
  with open(path, "w") as f:
    f.write(text)
  spec = importlib.util.spec_from_file_location(MODULE, path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@contextlib.contextmanager
def vit_module(mod):
  """`mod` in place of models/vit.py for what is built (encoders.build imports it by name)."""
  old = sys.modules[MODULE]
  sys.modules[MODULE] = mod
  try:
    yield
  finally:
    sys.modules[MODULE] = old


def build(config, mod):
  """(step(), forward()) compiled with `mod` as models/vit.py."""
  with vit_module(mod):
    s = loop.setup(config, mesh=sharding.make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1]))
    batch = sharding.global_batch(
      common.random_batch(pipeline.batch_spec(config, s.method.make_views)), s.mesh
    )
    step = s.train_step.lower(s.state, batch).compile()
    enc = s.method.encoder_from_config(config)
    images = jnp.concatenate([batch["image1"], batch["image2"]])
    fwd = (
      jax.jit(lambda p, x: enc.apply({"params": p}, x.astype(jnp.float32) / 127.5 - 1))
      .lower(s.state.params["encoder"], images)
      .compile()
    )
  holder = {"state": s.state}

  def one_step():
    holder["state"], m = step(holder["state"], batch)
    jax.block_until_ready(m)

  def forward():
    jax.block_until_ready(fwd(holder["state"].params["encoder"], images))

  return {"step": one_step, "forward": forward}


def timed(fn) -> tuple[float, float]:
  wall, cpu = time.perf_counter(), time.process_time()
  fn()
  return time.perf_counter() - wall, time.process_time() - cpu


def define_flags():
  """The command line's flags (defined here, not at import, so tests can import the module)."""
  flags.DEFINE_string("config", "configs/dig.py:size=tiny", "config[:variant]")
  flags.DEFINE_integer("batch", 32, "global batch size")
  flags.DEFINE_string("against", "HEAD~1", "git revision of A's models/vit.py")
  flags.DEFINE_integer("reps", 7, "alternating repetitions")
  flags.DEFINE_list("what", ["step", "forward"], "step and/or forward")


def main(argv):
  del argv
  f = flags.FLAGS
  config = config_utils.load_config(f.config)
  config.batch_size, config.data.num_workers = f.batch, 0
  load0 = os.getloadavg()
  fns = {"A": build(config, module_at(f.against)), "B": build(config, sys.modules[MODULE])}
  rows, figures = [], {"config": f.config, "batch": f.batch, "against": f.against}
  for what in f.what:
    times = {k: [] for k in fns}
    for k in fns:  # warm-up
      fns[k][what]()
    for _ in range(f.reps):
      for k in fns:
        times[k].append(timed(fns[k][what]))
    med = {k: [statistics.median(t[i] for t in v) for i in (0, 1)] for k, v in times.items()}
    rows.append(
      {
        "what": what,
        "A wall s": med["A"][0],
        "B wall s": med["B"][0],
        "B/A speed (wall)": med["A"][0] / med["B"][0],
        "A cpu s": med["A"][1],
        "B cpu s": med["B"][1],
        "B/A speed (cpu)": med["A"][1] / med["B"][1],
      }
    )
    figures[what] = {"wall_speedup": rows[-1]["B/A speed (wall)"]}
    figures[what]["cpu_speedup"] = rows[-1]["B/A speed (cpu)"]
  figures["load_avg"] = [load0[0], os.getloadavg()[0]]
  common.print_table(rows, figures)


if __name__ == "__main__":
  define_flags()
  app.run(main)
