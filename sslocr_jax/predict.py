r"""Recognize text images with a fine-tuned checkpoint.

    python -m sslocr_jax.predict --checkpoint=<finetune workdir> IMAGE_OR_FOLDER...

prints one `path<TAB>text<TAB>confidence` line per image (folders are searched recursively for
.png/.jpg/.jpeg/.bmp/.tif/.tiff/.webp/.gif, in sorted order). Images are resized to the model's
32x128 and recognized in fixed-size batches on the device(s) (the last batch is padded, so
the model compiles once). An unreadable image is reported on stderr, not printed, and makes the
exit status 1. The model (encoder, decoder, charset) comes from the workdir's config.json; the
weights from WORKDIR/best/ (the best validation step) unless `--nouse_best` or there is none,
then from the latest checkpoint in WORKDIR/checkpoints/.

In Python:

    rec = Recognizer.from_checkpoint("runs/finetune-cpu")
    rec([image_uint8_hwc, ...])  ->  [("text", 0.97), ...]
"""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from jax.sharding import NamedSharding, PartitionSpec
import numpy as np

from sslocr_jax import errors
from sslocr_jax import paths
from sslocr_jax.data import augment
from sslocr_jax.data import images
from sslocr_jax.methods import recognition
from sslocr_jax.train import checkpoint as ckpt_lib
from sslocr_jax.train import evaluation
from sslocr_jax.train import resolve
from sslocr_jax.train import sharding as sharding_lib

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")


def describe_choice(workdir, directory, step, use_best: bool) -> str:
  """Which step `from_checkpoint` loaded and why, e.g. 'step 2000 from runs/ft/best (best
  val_accuracy 81.2, val_one_minus_ned 93.1; latest step 2000)'."""
  workdir, directory = paths.workdir_path(workdir), paths.workdir_path(directory)
  latest = ckpt_lib.checkpoint_steps(workdir / "checkpoints")
  latest_text = f"latest step {latest[0]}" if latest else "no checkpoints/"
  if directory.name == "best":
    try:
      saved = json.loads((directory / "best.json").read_text())
      scores = {saved["metric"]: saved["value"], **saved.get("others", {})}
      why = "best " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items())
    except (OSError, ValueError, KeyError):
      why = "best validation"
    return f"step {step} from {directory} ({why}; {latest_text}; --nouse_best for the latest)"
  if directory.name == "checkpoints":
    reason = ("use_best off" if not use_best else "no best/ checkpoint")
    return f"step {step} from {directory} (the newest that restores; {reason})"
  return f"step {step} from {directory}"


class Recognizer:
  """A recognition model on the device(s): uint8 images -> (text, confidence).

  Attributes:
    config: the fine-tuning config (model, decoder, charset, image size).
    step: the training step of the loaded weights (or None).
  """

  def __init__(self, config, params, model_state, batch_size: int = 256, mesh=None, step=None,
               origin: str = ""):
    if config.get("method") != "recognition":
      raise ValueError(f"the checkpoint was written by method={config.get('method')!r}, not by "
                       "fine-tuning (configs/finetune.py): it has no decoder")
    self.config, self.step = config, step
    self.origin = origin  # which weights were loaded and why (describe_choice)
    self.charset = recognition.charset_from_config(config)
    self.mesh = mesh or sharding_lib.make_mesh({"data": -1, "fsdp": 1})
    replicated = NamedSharding(self.mesh, PartitionSpec())
    self.params = jax.device_put(params, replicated)
    self.model_state = jax.device_put(model_state, replicated)
    self.predict_batch = evaluation.make_batch_predictor(recognition, config, self.mesh,
                                                         batch_size)
    self.batch_size = self.predict_batch.batch_size

  @classmethod
  def from_checkpoint(cls, workdir: str, use_best: bool = True, batch_size: int = 256,
                      config=None):
    """Loads anything train/resolve.py resolves: a fine-tuning workdir (config.json + best/ or
    checkpoints/) or step folder, an exported state dict with its model JSON, or a PyTorch
    state dict (`.pth` / `.pt` / `.safetensors`: e.g. an official DiG fine-tuned file) with
    the model described by `config`."""
    ckpt = resolve.resolve(workdir, config, use_best=use_best)
    origin = ckpt.origin
    if not resolve.is_torch_file(ckpt.path):
      origin = describe_choice(workdir, ckpt.path, ckpt.step, use_best)
    logging.info("loaded %s", origin)
    return cls(ckpt.config, ckpt.params, ckpt.model_state, batch_size, step=ckpt.step,
               origin=origin)

  def recognize(self, images: np.ndarray):
    """uint8 [n, H, W, 3] already at the model's size -> (texts [n], confidences float [n])."""
    texts, confs = [], []
    for i in range(0, len(images), self.batch_size):
      ids, conf = self.predict_batch(self.params, self.model_state, images[i:i + self.batch_size])
      texts += [self.charset.decode(row) for row in ids]
      confs += [float(c) for c in conf]
    return texts, confs

  def __call__(self, images) -> list[tuple[str, float]]:
    """Images of any size (uint8 [H, W] or [H, W, 3] RGB) -> [(text, confidence)]."""
    h, w = self.config.image_height, self.config.image_width
    if not len(images):
      return []
    batch = np.stack([augment.resize(augment.to_rgb_uint8(np.asarray(im)), h, w)
                      for im in images])
    return list(zip(*self.recognize(batch)))


def find_images(paths) -> list[str]:
  """Files given, plus image files under the folders given (recursive, sorted)."""
  out = []
  for p in paths:
    if os.path.isdir(p):
      found = []
      for root, _, files in os.walk(p):
        found += [os.path.join(root, f) for f in files if f.lower().endswith(IMAGE_EXTS)]
      out += sorted(found)
    elif os.path.exists(p):
      out.append(p)
    else:
      raise errors.MissingPath(f"{p!r} does not exist")
  return out


def read_image(path: str) -> np.ndarray | None:
  """uint8 [H, W, 3] RGB (transparency composited: data/images.py), or None after a warning on
  stderr naming the file and why it cannot be decoded."""
  try:
    return images.read(path)
  except images.DecodeError as e:
    print(f"warning: cannot decode image {path}: {e}", file=sys.stderr)
    return None


def run(checkpoint: str, paths, use_best: bool = True, batch_size: int = 64, out=None) -> int:
  """Prints `path<TAB>text<TAB>confidence` per image; returns the number of unreadable files."""
  out = out or sys.stdout
  files = find_images(paths)
  if not files:
    raise errors.MissingPath(f"no images found in {list(paths)}")
  rec = Recognizer.from_checkpoint(checkpoint, use_best=use_best, batch_size=batch_size)
  print(f"loaded {rec.origin}", file=sys.stderr, flush=True)
  bad = 0
  for i in range(0, len(files), rec.batch_size):
    chunk, images = [], []
    for f in files[i:i + rec.batch_size]:
      image = read_image(f)
      if image is None:
        bad += 1
        continue
      chunk.append(f)
      images.append(image)
    for f, (text, conf) in zip(chunk, rec(images)):
      print(f"{f}\t{text}\t{conf:.4f}", file=out, flush=True)
  if bad:
    print(f"{bad} of {len(files)} images could not be decoded", file=sys.stderr)
  return bad


_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Fine-tuning workdir.")
_BATCH = flags.DEFINE_integer("batch_size", 64,
                              "Images per batch, global over the devices (fixed; padded).")
_BEST = flags.DEFINE_bool("use_best", True, "Use WORKDIR/best/ (best validation) if present.")


def main(argv):
  if not _CHECKPOINT.value:
    raise app.UsageError("--checkpoint=<finetune workdir> is required")
  if len(argv) < 2:
    raise app.UsageError("give at least one image file or folder")
  with errors.exit_on_user_error(errors.VERBOSE.value):
    bad = run(_CHECKPOINT.value, argv[1:], use_best=_BEST.value, batch_size=_BATCH.value)
  return 1 if bad else 0


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  app.run(main)
