r"""Our recognizer vs Tesseract on the same held-out-font synthetic lines.

    python benchmarks/vs_tesseract.py [--checkpoints=runs/ft-cpu60[,runs/other]] [--n=1000] \
        [--seed=3000017] [--word_prob=0.6] [--render_height=32] [--psm=7] \
        [--lexicon_words=wordfreq:en:50000 [--lexicon_bonuses=4[,2,6]]]

Renders `--n` lines with `data/render.py` in the held-out font families (`font_split=heldout`:
STIX, Computer Modern, Space Mono, Ubuntu, Ubuntu Mono; never drawn in training), a mix of
dictionary words (`--word_prob`) and numbers / prices / times / codes / random strings, at their
natural width. Every system reads the same images: Tesseract 5 as a new user runs it
(`tesseract IMAGE stdout --psm 7`, one text line, no preprocessing, all images in one process
through a list file), each checkpoint through `predict.Recognizer` (resized to its 32x128; a
ResNet + CTC model reads a line wider than 4:1 at its own aspect up to `--reading_max_width`, default
twice its width).
Scoring is the standard filtered one (lowercase, [0-9a-z] only, evaluate/metrics.py): word
accuracy and 1 - NED in percent; lines with no alphanumeric character are left out (counted).
With `--lexicon_words` each CTC checkpoint gets a second row read with that word list
(`predict --lexicon`, models/ctc_lexicon.py), as Tesseract reads with its English dictionaries;
`--lexicon_bonuses` takes several log-priors (one row each: choose it on validation lines, i.e.
another `--seed`, not on the test lines). Prints a table (system, lines, word acc., 1-NED,
seconds), word accuracy by label length and by held-out font family (where each system loses
its lines), then one JSON line.

Tesseract is optional: without it the script scores the checkpoints alone and says how to
install it (`apt-get install tesseract-ocr`; macOS: `brew install tesseract`). Nothing in the
tests needs it. The seed differs from every training / validation seed of the configs.
"""

import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import cv2  # noqa: E402

from sslocr_jax.data import charset as charset_lib  # noqa: E402
from sslocr_jax.data import sources  # noqa: E402
from sslocr_jax.data import metrics  # noqa: E402

_CHECKPOINTS = flags.DEFINE_list("checkpoints", [], "fine-tuning workdir(s) to score")
_N = flags.DEFINE_integer("n", 1000, "lines to render (before leaving out non-alphanumeric ones)")
_SEED = flags.DEFINE_integer("seed", 3_000_017, "renderer seed of the test lines")
_WORD_PROB = flags.DEFINE_float("word_prob", 0.6, "share of dictionary words among the lines")
_HEIGHT = flags.DEFINE_integer("render_height", 32, "height the lines are rendered at")
_PSM = flags.DEFINE_integer("psm", 7, "Tesseract page segmentation mode (7: one text line)")
_TESSERACT = flags.DEFINE_string("tesseract", "tesseract", "Tesseract executable")
_LEXICON = flags.DEFINE_string(
  "lexicon_words",
  "",
  "also score each CTC checkpoint with this word list (models/ctc_lexicon.py), e.g. "
  "wordfreq:en:50000, as Tesseract reads with its dictionaries",
)
_MAX_WIDTH = flags.DEFINE_integer(
  "reading_max_width",
  None,
  "predict.Recognizer's max_width (default: the model's, twice its width for ResNet + CTC; "
  "its trained width reads every line squeezed into it)",
)
_BONUS = flags.DEFINE_list(
  "lexicon_bonuses",
  [],
  "log-priors to score with --lexicon_words (default ctc_lexicon.DEFAULT_BONUS)",
)

INSTALL = (
  "Tesseract is not installed: `apt-get install tesseract-ocr` (Debian/Ubuntu), "
  "`brew install tesseract` (macOS); then rerun to add its row."
)


def test_lines(n: int, seed: int, word_prob: float, height: int):
  """(images uint8 [H, W, 3], labels, font families, left out): held-out-font lines with >= 1
  alphanumeric."""
  src = sources.SyntheticSource(
    n, seed=seed, font_split="heldout", word_prob=word_prob, height=height
  )
  faces = src.renderer.faces
  images, labels, families, left_out = [], [], [], 0
  for i in range(n):
    r = src[i]
    if not charset_lib.filter_label_for_metric(r["label"]):
      left_out += 1
      continue
    images.append(r["image"])
    labels.append(r["label"])
    families.append(faces[src.renderer.sample_text(i)[0]].family)
  return images, labels, families, left_out


def tesseract_read(images, exe: str, psm: int) -> list[str]:
  """Tesseract's text for each image (one process over a list file; per image if the page
  count does not match)."""
  with tempfile.TemporaryDirectory() as tmp:
    paths = []
    for i, image in enumerate(images):
      paths.append(os.path.join(tmp, f"{i:05d}.png"))
      cv2.imwrite(paths[-1], image[:, :, ::-1])
    listing = os.path.join(tmp, "list.txt")
    with open(listing, "w") as f:
      f.write("\n".join(paths) + "\n")
    out = subprocess.run(
      [exe, listing, "stdout", "--psm", str(psm)], capture_output=True, text=True, check=True
    ).stdout
    pages = out.split("\f")
    if len(pages) >= len(images) and all(not p.strip() for p in pages[len(images) :]):
      return [p.strip() for p in pages[: len(images)]]
    return [
      subprocess.run(
        [exe, p, "stdout", "--psm", str(psm)], capture_output=True, text=True, check=True
      ).stdout.strip()
      for p in paths
    ]


def ours_read(checkpoint: str, images, lexicon: str = "", bonus=None, max_width=None) -> list[str]:
  from sslocr_jax import predict  # pylint: disable=g-import-not-at-top
  from sslocr_jax.models import ctc_lexicon  # pylint: disable=g-import-not-at-top

  rec = predict.Recognizer.from_checkpoint(checkpoint, max_width=max_width)
  rec.use_lexicon(lexicon, ctc_lexicon.DEFAULT_BONUS if bonus is None else bonus)
  return [text for text, _ in rec(images)]


LENGTHS = ((1, 3), (4, 7), (8, 11), (12, 99))  # scored [0-9a-z] characters of the label
BUCKETS = [f"{lo}-{hi}" if hi < 99 else f"{lo}+" for lo, hi in LENGTHS]


def length_bucket(label: str) -> str:
  n = len(charset_lib.filter_label_for_metric(label))
  return next(k for k, (lo, hi) in zip(BUCKETS, LENGTHS) if lo <= n <= hi)


def by_group(preds, labels, groups) -> dict[str, float]:
  """Word accuracy % per group (`groups[i]`: line i's group), groups in first-seen order."""
  members = {}
  for p, t, g in zip(preds, labels, groups):
    members.setdefault(g, []).append((p, t))
  return {g: metrics.score(*zip(*pt)).report()["accuracy"] for g, pt in members.items()}


def by_length(preds, labels) -> dict[str, float]:
  """Word accuracy % per label length: where a reader loses lines (long lines squeezed into a
  fixed-width input, short ones without context)."""
  acc = by_group(preds, labels, [length_bucket(t) for t in labels])
  return {k: acc[k] for k in BUCKETS if k in acc}


def print_groups(title, rows, key, counts, width):
  """One table: word accuracy % of each system (row) per group (column) of `key`."""
  keys = list(counts)
  print(f"\nword acc. % by {title} (lines: " + ", ".join(f"{k}: {counts[k]}" for k in keys) + ")")
  print(f"{'system':<{width}} " + " ".join(f"{k:>{max(7, len(k))}}" for k in keys))
  for r in rows:
    print(f"{r['system']:<{width}} " + " ".join(f"{r[key][k]:>{max(7, len(k))}.2f}" for k in keys))


def main(argv):
  del argv
  images, labels, families, left_out = test_lines(
    _N.value, _SEED.value, _WORD_PROB.value, _HEIGHT.value
  )
  rows = []

  def add(name, read):
    t = time.perf_counter()
    preds = read()
    seconds = time.perf_counter() - t
    r = metrics.score(preds, labels).report()
    rows.append(
      {
        "system": name,
        "lines": r["samples"],
        "word_accuracy": r["accuracy"],
        "one_minus_ned": r["one_minus_ned"],
        "seconds": round(seconds, 1),
        "by_length": by_length(preds, labels),
        "by_family": dict(sorted(by_group(preds, labels, families).items())),
      }
    )

  if shutil.which(_TESSERACT.value):
    version = subprocess.run(
      [_TESSERACT.value, "--version"], capture_output=True, check=False, text=True
    ).stdout.splitlines()[0]
    add(
      f"{version} --psm {_PSM.value}", lambda: tesseract_read(images, _TESSERACT.value, _PSM.value)
    )
  else:
    print(INSTALL)
  for ckpt in _CHECKPOINTS.value:
    add(ckpt, lambda ckpt=ckpt: ours_read(ckpt, images, max_width=_MAX_WIDTH.value))
    bonuses = ([float(b) for b in _BONUS.value] or [None]) if _LEXICON.value else []
    for bonus in bonuses:
      name = f"{ckpt} + {_LEXICON.value}" + ("" if bonus is None else f" (bonus {bonus:g})")
      read = lambda ckpt=ckpt, bonus=bonus: ours_read(
        ckpt, images, _LEXICON.value, bonus, _MAX_WIDTH.value
      )
      add(name, read)
  print(
    f"{len(labels)} held-out-font lines (seed {_SEED.value}, word_prob {_WORD_PROB.value}, "
    f"height {_HEIGHT.value}; {left_out} without [0-9a-z] left out), lowercase [0-9a-z] "
    "scoring"
  )
  width = max([44] + [len(r["system"]) for r in rows])
  print(f"{'system':<{width}} {'lines':>6} {'word acc. %':>12} {'1-NED %':>8} {'seconds':>8}")
  for r in rows:
    print(
      f"{r['system']:<{width}} {r['lines']:>6} {r['word_accuracy']:>12.2f} "
      f"{r['one_minus_ned']:>8.2f} {r['seconds']:>8.1f}"
    )
  if rows:
    lengths = collections.Counter(length_bucket(t) for t in labels)
    print_groups(
      "label length", rows, "by_length", {k: lengths[k] for k in BUCKETS if k in lengths}, width
    )
    print_groups(
      "font family", rows, "by_family", dict(sorted(collections.Counter(families).items())), width
    )
  print(
    json.dumps(
      {
        "seed": _SEED.value,
        "word_prob": _WORD_PROB.value,
        "render_height": _HEIGHT.value,
        "left_out": left_out,
        "rows": rows,
      }
    )
  )


if __name__ == "__main__":
  app.run(main)
