r"""Host data pipeline throughput: method samples (views + masks) per second per core.

    python benchmarks/data_pipeline.py [--source=synthetic|lmdb] [--seconds=N]
        [--config=configs/dig.py:cpu] [--workers=2]

Per core: one thread, OpenCV single-threaded, record -> `method.make_views` in a loop (for DiG a
sample is the resized original, the augmented view and the 70% mask). For `lmdb`, an LMDB of
rendered lines (JPEG) is written to a temp folder first and read back with decoding. The last
row runs the real grain pipeline (shuffle, views, batching, worker processes) for comparison.
"""

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from sslocr_jax import config_utils  # noqa: E402
from sslocr_jax.data import pipeline  # noqa: E402
from sslocr_jax.data import sources  # noqa: E402
from sslocr_jax.train import registry  # noqa: E402

_CONFIG = flags.DEFINE_string("config", "configs/dig.py:cpu", "config[:variant]")
_SOURCE = flags.DEFINE_enum("source", "synthetic", ["synthetic", "lmdb"], "data source")
_SECONDS = flags.DEFINE_float("seconds", 5.0, "seconds per measurement")
_WORKERS = flags.DEFINE_integer("workers", 2, "grain worker processes for the pipeline row")
_LMDB_SIZE = flags.DEFINE_integer("lmdb_samples", 4000, "records written for --source=lmdb")


def per_core(source, make_views, config, seconds: float) -> float:
  """Samples/s of record + views on one thread."""
  rng = np.random.default_rng(0)
  n, i, t0 = 0, 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    record = source[i % len(source)]
    if record is not None:
      make_views(record, rng, config)
      n += 1
    i += 1
  return n / (time.perf_counter() - t0)


def grain_pipeline(config, make_views, seconds: float) -> float:
  """Samples/s of the full grain pipeline (process-local batches)."""
  it = iter(pipeline.make_dataset(config, make_views))
  next(it)
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    n += len(next(iter(next(it).values())))
  return n / (time.perf_counter() - t0)


def main(argv):
  del argv
  cv2.setNumThreads(1)
  config = config_utils.load_config(_CONFIG.value)
  method = registry.get_method(config)
  with tempfile.TemporaryDirectory() as tmp:
    if _SOURCE.value == "lmdb":
      synth = sources.make_source(config.data)
      samples = (
        (cv2.imencode(".jpg", synth[i]["image"][:, :, ::-1])[1].tobytes(), synth[i]["label"])
        for i in range(_LMDB_SIZE.value)
      )
      sources.write_lmdb(os.path.join(tmp, "lines"), samples)
      config.data.source = "lmdb"
      config.data.lmdb_paths = [os.path.join(tmp, "lines")]
    source = sources.make_source(config.data)
    per_core(source, method.make_views, config, 1.0)  # warm-up: fonts, glyph caches
    core = per_core(source, method.make_views, config, _SECONDS.value)
    config.data.num_workers = _WORKERS.value
    full = grain_pipeline(config, method.make_views, _SECONDS.value)
  rows = [
    {"what": f"{config.method} views, 1 core", "source": _SOURCE.value, "samples/s": core},
    {
      "what": f"grain pipeline, {_WORKERS.value} workers",
      "source": _SOURCE.value,
      "samples/s": full,
    },
  ]
  common.print_table(
    rows,
    {
      "samples_per_sec_per_core": core,
      "pipeline_samples_per_sec": full,
      "source": _SOURCE.value,
      "method": config.method,
      "cpu_count": os.cpu_count(),
    },
  )


if __name__ == "__main__":
  app.run(main)
