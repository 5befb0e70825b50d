r"""Recognize text images with any recognizer the project can load.

    python -m sslocr_jax.predict --checkpoint=C [--format=tsv|jsonl] [--batch_size=64] INPUT...

C is any of (train/resolve.py):
  a fine-tuning workdir          config.json + best/ (best validation step, unless
                                 `--nouse_best`) or the latest step of checkpoints/;
  its checkpoints/ folder, or one step folder (`.../checkpoints/500`): config.json above it;
  an exported model              `FILE.safetensors` (or `.pth`) with its `FILE.json`
                                 (`python -m sslocr_jax.export`), or a folder holding one;
  an official DiG `.pth`         with the model named by `--model_config`, e.g.
                                 `--model_config=configs/evaluate.py:dig_official`.
`--model_config` only describes a checkpoint that carries no config of its own.

INPUT: image files, folders (searched recursively for .png/.jpg/.jpeg/.bmp/.tif/.tiff/.webp/
.gif, in sorted order), glob patterns (quoted: `'crops/**/*.png'`), or `-` for a list of paths
(one per line) on stdin. Prints one `path<TAB>text<TAB>confidence` line per image (`--format=
jsonl`: `{"path", "text", "confidence"}`), in input order; a progress bar goes to stderr when
there are more images than a screenful and stderr is a terminal. Images are decoded on host
threads (data/images.py: RGBA composited onto white or black, 16-bit scaled, palette expanded, huge
files refused before decoding), resized to the model's 32x128 and recognized in fixed-size
device batches (the last one padded, so the model compiles once per width) while the next batch
decodes. A ResNet + CTC model reads a line wider than 4:1 at its own aspect, up to `--max_width`
(default twice the trained width; `reading_max_width`), instead of squeezing it.
An image that cannot be decoded (empty, not an image, truncated, too large, missing) is
reported on stderr with its path and the reason, and skipped. Exit status: 0 when every image
was recognized, 1 when some were skipped, 2 for a usage error (no checkpoint, no inputs).

In Python:

    rec = Recognizer.from_checkpoint("runs/finetune-cpu")   # any C above (config= for a .pth)
    rec([image_uint8_hwc, ...])  ->  [("text", 0.97), ...]
"""

import concurrent.futures
import functools
import glob
import json
import os
import shutil
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from jax.sharding import NamedSharding, PartitionSpec
from ml_collections import config_flags
import numpy as np

from sslocr_jax import errors
from sslocr_jax import paths
from sslocr_jax.data import augment
from sslocr_jax.data import images as images_lib
from sslocr_jax.methods import recognition
from sslocr_jax.models import ctc_lexicon
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
    reason = "use_best off" if not use_best else "no best/ checkpoint"
    return f"step {step} from {directory} (the newest that restores; {reason})"
  return f"step {step} from {directory}"


class Recognizer:
  """A recognition model on the device(s): uint8 images -> (text, confidence).

  Attributes:
    config: the fine-tuning config (model, decoder, charset, image size).
    step: the training step of the loaded weights (or None).
  """

  def __init__(
    self,
    config,
    params,
    model_state,
    batch_size: int = 256,
    mesh=None,
    step=None,
    origin: str = "",
    max_width: int | None = None,
  ):
    if config.get("method") != "recognition":
      raise ValueError(
        f"the checkpoint was written by method={config.get('method')!r}, not by "
        "fine-tuning (configs/finetune.py): it has no decoder"
      )
    self.config, self.step = config, step
    self.origin = origin  # which weights were loaded and why (describe_choice)
    self.charset = recognition.charset_from_config(config)
    self.mesh = mesh or sharding_lib.make_mesh({"data": -1, "fsdp": 1})
    replicated = NamedSharding(self.mesh, PartitionSpec())
    self.params = jax.device_put(params, replicated)
    self.model_state = jax.device_put(model_state, replicated)
    self.predict_batch = evaluation.make_batch_predictor(recognition, config, self.mesh, batch_size)
    self.batch_size = self.predict_batch.batch_size
    self.lexicon = None  # a ctc_lexicon.LexiconDecoder (use_lexicon)
    self._logits_batch = None
    self.max_width = reading_max_width(config) if max_width is None else int(max_width)

  def use_lexicon(self, spec: str, bonus: float = ctc_lexicon.DEFAULT_BONUS):
    """Decode with a word list (models/ctc_lexicon.py; CTC models only): `spec` is
    `wordfreq:LANG:N` or a text file of words, "" turns it off. Confidences then are
    P_ctc(text | image), summed over the alignments."""
    if not spec:
      self.lexicon = None
      return self
    if self.config.decoder != "ctc":
      raise errors.UserError(
        f"--lexicon needs a CTC model; this one has decoder={self.config.decoder!r}"
      )
    self.lexicon = ctc_lexicon.LexiconDecoder(
      ctc_lexicon.load(spec), recognition.charset_from_config(self.config), bonus=bonus
    )
    if self._logits_batch is None:
      self._logits_batch = evaluation.make_batch_runner(
        functools.partial(recognition.ctc_logits, config=self.config),
        self.config,
        self.mesh,
        self.batch_size,
      )
    return self

  @classmethod
  def from_checkpoint(
    cls,
    workdir: str,
    use_best: bool = True,
    batch_size: int = 256,
    config=None,
    max_width: int | None = None,
  ):
    """Loads anything train/resolve.py resolves: a fine-tuning workdir (config.json + best/ or
    checkpoints/), its checkpoints/ or one step folder, an exported state dict with its model
    JSON (file or folder), or a PyTorch state dict (`.pth` / `.pt` / `.safetensors`: e.g. an
    official DiG fine-tuned file) with the model described by `config`."""
    ckpt = resolve.resolve(workdir, config, use_best=use_best)
    origin = ckpt.origin
    if not resolve.is_torch_file(ckpt.path):
      origin = describe_choice(workdir, ckpt.path, ckpt.step, use_best)
    logging.info("loaded %s", origin)
    return cls(
      ckpt.config,
      ckpt.params,
      ckpt.model_state,
      batch_size,
      step=ckpt.step,
      origin=origin,
      max_width=max_width,
    )

  def resize(self, image: np.ndarray) -> np.ndarray:
    """uint8 [h, w, 3] -> uint8 [H, W, 3] at the model's height H; W = `reading_width`."""
    height = self.config.image_height
    return augment.resize(image, height, reading_width(image.shape, self.config, self.max_width))

  def recognize(self, images: np.ndarray):
    """uint8 [n, H, W, 3] of one size -> (texts [n], confidences float [n]). H is the model's
    height; W its width, or any multiple of 32 up to `max_width` for a width-free model."""
    texts, confs = [], []
    for i in range(0, len(images), self.batch_size):
      if self.lexicon is not None:
        logits = self._logits_batch(self.params, self.model_state, images[i : i + self.batch_size])
        for row in ctc_lexicon.log_softmax(logits):
          text, logp = self.lexicon.decode(row)
          texts.append(text)
          confs.append(float(np.exp(logp)))
        continue
      ids, conf = self.predict_batch(self.params, self.model_state, images[i : i + self.batch_size])
      texts += [self.charset.decode(row) for row in ids]
      confs += [float(c) for c in conf]
    return texts, confs

  def __call__(self, images) -> list[tuple[str, float]]:
    """Images of any size (uint8 / uint16 [H, W], [H, W, 1|3|4] RGB[A]) -> [(text, confidence)].
    Alpha is composited (data/images.to_rgb)."""
    if not len(images):
      return []
    return self.recognize_resized([self.resize(images_lib.to_rgb(np.asarray(im))) for im in images])

  def recognize_resized(self, images) -> list[tuple[str, float]]:
    """Images already through `resize` (widths may differ) -> [(text, confidence)] in order:
    one `recognize` call per width (each width compiles once)."""
    out = [None] * len(images)
    by_width = {}
    for i, im in enumerate(images):
      by_width.setdefault(im.shape[1], []).append(i)
    for idx in by_width.values():
      texts, confs = self.recognize(np.stack([images[i] for i in idx]))
      for i, text, conf in zip(idx, texts, confs):
        out[i] = (text, conf)
    return out


READ_WIDTH_STEP = 32  # reading widths are multiples of this (a few compiles, not one per image)


def reading_max_width(config) -> int:
  """Widest input a model reads. A ResNet (no TPS) + CTC recognizer has no parameter tied to the
  width (convolutions, a BiLSTM, a per-frame head), so a line wider than 4:1 is read at its own
  aspect up to twice the trained width instead of being squeezed into it: its characters then
  have the shapes training saw. On the cpu60 model (docs/recognition.md, "Long lines") this took
  the validation lines' 12+ character words from 26.8% to 58.9% (greedy; 50.0 -> 67.9 with the
  word list). Every other model (a ViT's position table, attention decoders) reads its trained
  width only."""
  model = config.model
  if model.get("name") == "resnet" and not model.get("tps") and config.get("decoder") == "ctc":
    return 2 * config.image_width
  return config.image_width


def reading_width(shape, config, max_width: int) -> int:
  """Input width for an image of `shape` (h, w, ...): its width at the model's height, rounded
  to READ_WIDTH_STEP, within [config.image_width, max_width] (never narrower than trained: a
  short word is stretched as in training)."""
  h, w = shape[:2]
  natural = round(w * config.image_height / max(h, 1) / READ_WIDTH_STEP) * READ_WIDTH_STEP
  return int(min(max(natural, config.image_width), max(max_width, config.image_width)))


def expand_inputs(inputs, stdin=None) -> tuple[list[str], list[tuple[str, str]]]:
  """INPUT arguments -> (image files in order, [(input, reason)] for those that name nothing).

  Folders are searched recursively (sorted); a pattern with * ? [ is a glob (** recursive);
  `-` reads one path per line from `stdin` (files, folders or globs again).
  """
  files, missing = [], []
  for p in inputs:
    if p == "-":
      lines = [ln.strip() for ln in (stdin or sys.stdin).read().splitlines()]
      more, miss = expand_inputs([ln for ln in lines if ln and ln != "-"])
      files += more
      missing += miss
    elif os.path.isdir(p):
      found = []
      for root, _, names in os.walk(p):
        found += [os.path.join(root, f) for f in names if f.lower().endswith(IMAGE_EXTS)]
      files += sorted(found)
    elif os.path.exists(p):
      files.append(p)
    elif glob.has_magic(p):
      found = sorted(f for f in glob.glob(p, recursive=True) if os.path.isfile(f))
      files += found
      if not found:
        missing.append((p, "no file matches the pattern"))
    else:
      missing.append((p, "no such file or folder"))
  return files, missing


def _load(path: str, resize):
  """(uint8 [H, W, 3] = resize(image), None) or (None, reason): runs on a host thread."""
  try:
    return resize(images_lib.read(path)), None
  except (images_lib.DecodeError, OSError) as e:
    return None, str(e) if isinstance(e, images_lib.DecodeError) else e.strerror or str(e)


def _write(out, fmt: str, path: str, text: str, conf: float) -> None:
  if fmt == "jsonl":
    out.write(
      json.dumps({"path": path, "text": text, "confidence": round(conf, 4)}, ensure_ascii=False)
      + "\n"
    )
  else:
    out.write(f"{path}\t{text}\t{conf:.4f}\n")


def run(
  checkpoint: str,
  paths,
  use_best: bool = True,
  batch_size: int = 64,
  out=None,
  fmt: str = "tsv",
  config=None,
  stdin=None,
  lexicon: str = "",
  lexicon_bonus: float = ctc_lexicon.DEFAULT_BONUS,
  max_width: int | None = None,
) -> int:
  """Prints one line per image (`fmt` tsv or jsonl); returns the number of skipped inputs."""
  files, missing = expand_inputs(paths, stdin)
  for p, reason in missing:
    print(f"warning: {p}: {reason}, skipped", file=sys.stderr)
  if not files:
    raise errors.MissingPath(f"no images found in {list(paths)}")
  rec = Recognizer.from_checkpoint(
    checkpoint, use_best=use_best, batch_size=batch_size, config=config, max_width=max_width
  )
  rec.use_lexicon(lexicon, lexicon_bonus)
  print(f"loaded {rec.origin}", file=sys.stderr, flush=True)
  bad = len(missing) + recognize_files(rec, files, out, fmt)
  if bad:
    print(f"{bad} of {len(files) + len(missing)} inputs could not be recognized", file=sys.stderr)
  return bad


def recognize_files(rec: Recognizer, files, out=None, fmt: str = "tsv") -> int:
  """Writes one line per readable file to `out` (in order); returns the number skipped.

  Files are decoded and resized on host threads, one batch ahead of the device.
  """
  out = out or sys.stdout
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  screenful = shutil.get_terminal_size().lines
  bar = tqdm(
    total=len(files),
    unit="img",
    file=sys.stderr,
    leave=False,
    disable=None if len(files) > screenful else True,
  )
  bad = 0
  chunks = [files[i : i + rec.batch_size] for i in range(0, len(files), rec.batch_size)]
  with concurrent.futures.ThreadPoolExecutor(max(1, min(16, os.cpu_count() or 1))) as pool:
    submit = lambda chunk: [pool.submit(_load, f, rec.resize) for f in chunk]
    pending = submit(chunks[0]) if chunks else []
    for k, chunk in enumerate(chunks):
      loaded = [f.result() for f in pending]
      pending = submit(chunks[k + 1]) if k + 1 < len(chunks) else []  # decodes during the batch
      good = [(f, im) for f, (im, _) in zip(chunk, loaded) if im is not None]
      for f, (_, reason) in zip(chunk, loaded):
        if reason is not None:
          bad += 1
          print(f"warning: cannot decode image {f}: {reason}, skipped", file=sys.stderr)
      if good:
        for (f, _), (text, conf) in zip(good, rec.recognize_resized([im for _, im in good])):
          _write(out, fmt, f, text, conf)
        out.flush()
      bar.update(len(chunk))
  bar.close()
  return bad


_CHECKPOINT = flags.DEFINE_string(
  "checkpoint",
  None,
  "Fine-tuning workdir, its checkpoints/ or step folder, an exported "
  ".safetensors (+ .json) file or folder, or a .pth with --model_config.",
)
_MODEL_CONFIG = config_flags.DEFINE_config_file(
  "model_config",
  None,
  "The model of a checkpoint that carries no config, e.g. "
  "configs/evaluate.py:dig_official for an official DiG fine-tuned .pth.",
)
_FORMAT = flags.DEFINE_enum(
  "format",
  "tsv",
  ["tsv", "jsonl"],
  "tsv: path<TAB>text<TAB>confidence; jsonl: {path, text, confidence}.",
)
_BATCH = flags.DEFINE_integer(
  "batch_size", 64, "Images per device batch, all devices together (fixed; the last one padded)."
)
_BEST = flags.DEFINE_bool("use_best", True, "Use WORKDIR/best/ (best validation) if present.")
_LEXICON = flags.DEFINE_string(
  "lexicon",
  "",
  "CTC models: prefer a word of this list when the image backs it (models/ctc_lexicon.py): "
  "wordfreq:LANG:N (e.g. wordfreq:en:50000) or a text file, one word per line.",
)
_MAX_WIDTH = flags.DEFINE_integer(
  "max_width",
  None,
  "Widest input: lines wider than the model's aspect are read at their own aspect up to this "
  "width (ResNet + CTC models; default twice the trained width; the trained width = squeeze).",
)
_LEXICON_BONUS = flags.DEFINE_float(
  "lexicon_bonus", None, "Log-prior (nats) of a lexicon word; default ctc_lexicon.DEFAULT_BONUS."
)


def main(argv):
  if not _CHECKPOINT.value:
    raise app.UsageError("--checkpoint=C is required (a workdir, step folder, exported file)")
  if len(argv) < 2:
    raise app.UsageError("give at least one image file, folder, glob or - (paths on stdin)")
  with errors.exit_on_user_error(errors.VERBOSE.value):
    bad = run(
      _CHECKPOINT.value,
      argv[1:],
      use_best=_BEST.value,
      batch_size=_BATCH.value,
      fmt=_FORMAT.value,
      config=_MODEL_CONFIG.value,
      lexicon=_LEXICON.value,
      lexicon_bonus=(
        ctc_lexicon.DEFAULT_BONUS if _LEXICON_BONUS.value is None else _LEXICON_BONUS.value
      ),
      max_width=_MAX_WIDTH.value,
    )
  return 1 if bad else 0


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  app.run(main)
