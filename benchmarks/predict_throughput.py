r"""End-to-end `python -m sslocr_jax.predict` throughput of the JAX model: files -> text.

    python benchmarks/predict_throughput.py [--config=configs/finetune.py:cpu] \
        [--batch=64] [--images=512] [--iters=2]

Writes `--images` synthetic word PNGs of varied sizes to a temporary folder, builds the
config's recognizer with fresh weights (a workdir saved at step 0), then times reading the
files of the folder (`predict.recognize_files` on a loaded model: decoding on host threads,
resizing, device batches, output lines) after a compiling call; the model alone
(`Recognizer.recognize` on the already-resized uint8 batch), to show what decoding costs; and
the whole command once (`predict.run`: load, compile, recognize). Reports images/s, the batch,
the CPU count and the load average over the timed runs (other processes slow it down).
Fresh weights: autoregressive decoders run all max_len + 1 steps (the worst case); CTC is
unaffected. Prints a table, then the figures as one JSON line.
"""

import io
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import cv2  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from sslocr_jax import predict  # noqa: E402
from sslocr_jax.data import augment  # noqa: E402
from sslocr_jax.data import sources  # noqa: E402
from sslocr_jax.train import checkpoint as ckpt_lib  # noqa: E402
from sslocr_jax.train import loop  # noqa: E402

_CONFIG = flags.DEFINE_string("config", "configs/finetune.py:cpu", "config[:variant]")
_BATCH = flags.DEFINE_integer("batch", 64, "predict --batch_size")
_IMAGES = flags.DEFINE_integer("images", 512, "image files to recognize")
_ITERS = flags.DEFINE_integer("iters", 2, "timed runs (after the compiling one)")


def main(argv):
  del argv
  config = common.load_config(_CONFIG.value)
  with tempfile.TemporaryDirectory() as tmp:
    workdir = os.path.join(tmp, "ft")
    os.makedirs(workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort())
    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    checkpointer.save(0, loop.setup(config).state)
    checkpointer.close()
    folder = os.path.join(tmp, "images")
    os.makedirs(folder)
    src = sources.SyntheticSource(_IMAGES.value, seed=7)
    resized = []
    for i in range(_IMAGES.value):
      image = src[i]["image"]
      cv2.imwrite(os.path.join(folder, f"{i:05d}.png"), image[:, :, ::-1])
      resized.append(augment.resize(image, config.image_height, config.image_width))
    resized = np.stack(resized)

    rec = predict.Recognizer.from_checkpoint(workdir, batch_size=_BATCH.value)
    rec.recognize(resized[: rec.batch_size])  # compile
    model_s = common.time_calls(lambda: rec.recognize(resized), _ITERS.value)

    files, _ = predict.expand_inputs([folder])
    load0 = os.getloadavg()[0]
    start = time.perf_counter()
    for _ in range(_ITERS.value):
      out = io.StringIO()
      assert predict.recognize_files(rec, files, out) == 0
    run_s = (time.perf_counter() - start) / _ITERS.value
    assert len(out.getvalue().splitlines()) == _IMAGES.value
    start = time.perf_counter()  # the whole command: load, compile, then the same work
    predict.run(workdir, [folder], batch_size=_BATCH.value, out=io.StringIO())
    cold_s = time.perf_counter() - start
  n = _IMAGES.value
  figures = {
    "config": _CONFIG.value,
    "decoder": config.decoder,
    "batch": rec.batch_size,
    "images": n,
    "devices": jax.device_count(),
    "backend": jax.default_backend(),
    "cpus": os.cpu_count(),
    "load_avg_1min": round((load0 + os.getloadavg()[0]) / 2, 2),
    "predict_images_per_s": round(n / run_s, 1),
    "model_only_images_per_s": round(n / model_s, 1),
    "command_seconds_with_load_and_compile": round(cold_s, 1),
  }
  common.print_table([figures], figures)


if __name__ == "__main__":
  app.run(main)
