"""TFDS builder `synthetic_lines`: text lines of the built-in renderer.

Splits: "train" = `Renderer(seed, font_split="train")` indices [0, num_train);
"test" = `Renderer(seed + 1, font_split="heldout")` indices [0, num_test), fonts
never drawn in "train". Features: image (PNG, uint8 [height, W, 3] RGB), label,
index (renderer index), font (face name).
"""

import dataclasses

import cv2
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from sslocr_jax.data import render


@dataclasses.dataclass
class SyntheticLinesConfig(tfds.core.BuilderConfig):
  num_train: int = 100_000
  num_test: int = 2_000
  seed: int = 0
  height: int = 32


class SyntheticLines(tfds.core.GeneratorBasedBuilder):
  """Synthetic text lines (train fonts / held-out fonts)."""

  VERSION = tfds.core.Version("1.0.0")
  # tfds derives this via `importlib_resources` (not installed): give it directly.
  code_path = epath.Path(__file__)
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
    SyntheticLinesConfig(name="default"),
    SyntheticLinesConfig(name="small", num_train=10_000, num_test=1_000),
  ]

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
          "label": tfds.features.Text(),
          "index": np.int64,
          "font": tfds.features.Text(),
        }
      ),
      supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    c = self.builder_config
    return {
      "train": self._generate_examples(c.seed, "train", c.num_train),
      "test": self._generate_examples(c.seed + 1, "heldout", c.num_test),
    }

  def _generate_examples(self, seed, font_split, num):
    renderer = render.Renderer(seed=seed, height=self.builder_config.height, font_split=font_split)
    for i in range(num):
      image, label = renderer.render(i)
      face = renderer.faces[renderer.sample_text(i)[0]].name
      ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
      assert ok
      # PNG bytes go in as is: tfds only needs TensorFlow to encode arrays.
      yield i, {"image": png.tobytes(), "label": label, "index": i, "font": face}
