r"""SimAN's generative use: restyle a text patch with the style of another patch; writes a PNG.

    python benchmarks/siman_demo.py --workdir=runs/siman_cpu --out=siman_demo.png
    python benchmarks/siman_demo.py --workdir=runs/siman_cpu --content=a.png,b.png \
        --style=c.png,d.png --out=mine.png

`--workdir` is a SimAN pretraining workdir (its config.json and latest checkpoint). Each row
of the grid: content patch | style patch | restyled (the content patch's text, rendered by the
decoder with the style statistics SAN aligned from the style patch). Without --content/--style
the patches are the left halves (content) and right halves (style) of synthetic lines of the
run's data config (seed `--seed`), the style taken from the next line: other words, fonts and
colours. Images given on the command line are resized to 32 x W (the run's patch size).
Runs on the CPU in a few seconds; prints the output path.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import cv2  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from sslocr_jax.data import augment  # noqa: E402
from sslocr_jax.data import sources  # noqa: E402
from sslocr_jax.methods import common  # noqa: E402
from sslocr_jax.methods import siman  # noqa: E402
from sslocr_jax.train import checkpoint as ckpt_lib  # noqa: E402
from sslocr_jax.train import resolve  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "SimAN pretraining workdir", required=True)
_OUT = flags.DEFINE_string("out", "siman_demo.png", "output PNG")
_NUM = flags.DEFINE_integer("num", 8, "rows (synthetic patches)")
_SEED = flags.DEFINE_integer(
  "seed", 1_000_003, "synthetic data seed (default: not the training one)"
)
_CONTENT = flags.DEFINE_list("content", [], "content images (comma-separated paths)")
_STYLE = flags.DEFINE_list("style", [], "style images, one per content image")


def _read(path: str, h: int, w: int) -> np.ndarray:
  image = cv2.imread(path, cv2.IMREAD_COLOR)
  if image is None:
    raise SystemExit(f"error: cannot read image {path!r}")
  return augment.resize(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), h, w)


def synthetic_pairs(config, num: int, seed: int):
  """(content, style) uint8 [num, 32, W, 3]: left half of line i, right half of line i + 1."""
  data = config.data.copy_and_resolve_references()
  data.seed = seed
  source = sources.make_source(data)
  h, w = config.image_height, config.image_width
  lines = [augment.resize(source[i]["image"], h, 2 * w) for i in range(num + 1)]
  content = np.stack([line[:, :w] for line in lines[:num]])
  style = np.stack([line[:, w:] for line in lines[1:]])
  return content, style


def restyle(config, params, model_state, content, style):
  """uint8 [N, 32, W, 3] content and style patches -> restyled uint8 [N, 32, W, 3]."""
  fn = jax.jit(lambda p, ms, s, c: siman.restore(p, ms, s, c, config, train=False)[0])
  out = fn(params, model_state, style, content)
  return np.asarray(np.clip((np.asarray(out) + 1.0) * 127.5, 0, 255).round(), np.uint8)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = resolve.load_run_config(_WORKDIR.value)
  if config.method != "siman":
    raise SystemExit(f"error: {_WORKDIR.value} is a {config.method!r} run, not a SimAN one")
  h, w = config.image_height, config.image_width
  if _CONTENT.value or _STYLE.value:
    if len(_CONTENT.value) != len(_STYLE.value):
      raise SystemExit("error: give as many --style images as --content images")
    content = np.stack([_read(p, h, w) for p in _CONTENT.value])
    style = np.stack([_read(p, h, w) for p in _STYLE.value])
  else:
    content, style = synthetic_pairs(config, _NUM.value, _SEED.value)
  state = ckpt_lib.restore_params(_WORKDIR.value)
  out = restyle(config, state["params"], state.get("model_state") or {}, content, style)
  grid = common.image_grid([x.astype(np.float32) / 255.0 for x in (content, style, out)])
  Image.fromarray(np.asarray(grid)).save(_OUT.value)
  print(_OUT.value)


if __name__ == "__main__":
  app.run(main)
