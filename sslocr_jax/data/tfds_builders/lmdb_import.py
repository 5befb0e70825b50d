"""TFDS builder `lmdb_import`: clovaai LMDB folders -> TFDS splits.

The split -> folders mapping comes from the builder config
(`LmdbImportConfig(name, splits={"train": [folder, ...], ...})`) or, for the
`from_env` config, from `$SSLOCR_LMDB_SPLITS` ("train=/a,/b;test=/c").
Images are kept as stored (JPEG/PNG bytes) when they decode to uint8 RGB, else re-encoded as
PNG after `images.decode` (grayscale, 16-bit, palette, RGBA composited); empty or
undecodable records and records with a missing key are skipped with a warning
naming the folder and record number, and counted in `LmdbImport.num_skipped`.
"""

import dataclasses
import logging
import os

import cv2
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from sslocr_jax.data import images
from sslocr_jax.data import sources

ENV = "SSLOCR_LMDB_SPLITS"


def parse_splits(text):
  """ "train=/a,/b;test=/c" -> {"train": ["/a", "/b"], "test": ["/c"]}."""
  out = {}
  for part in filter(None, (p.strip() for p in text.split(";"))):
    name, eq, folders = part.partition("=")
    if not eq or not folders:
      raise ValueError(f"bad split spec {part!r}, expected name=folder[,folder...]")
    out[name.strip()] = [f for f in folders.split(",") if f]
  return out


@dataclasses.dataclass
class LmdbImportConfig(tfds.core.BuilderConfig):
  splits: dict = dataclasses.field(default_factory=dict)


class LmdbImport(tfds.core.GeneratorBasedBuilder):
  """Labelled text-line crops imported from LMDB folders."""

  VERSION = tfds.core.Version("1.0.0")
  # tfds derives this via `importlib_resources` (not installed): give it directly.
  code_path = epath.Path(__file__)
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [LmdbImportConfig(name="from_env")]

  num_skipped = 0

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(None, None, 3)),
          "label": tfds.features.Text(),
          "source": tfds.features.Text(),  # "folder:record"
        }
      ),
      supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    splits = self.builder_config.splits or parse_splits(os.environ.get(ENV, ""))
    if not splits:
      raise ValueError(
        f"lmdb_import: no splits; give LmdbImportConfig(splits=...) "
        f"or set ${ENV}='train=/lmdb/a,/lmdb/b;test=/lmdb/c'"
      )
    for folders in splits.values():
      for f in folders:
        sources._check_lmdb_dir(f)  # pylint: disable=protected-access
    return {name: self._generate_examples(folders) for name, folders in splits.items()}

  def _generate_examples(self, folders):
    for folder in folders:
      with sources.lmdb_env(folder).begin() as txn:
        n = int(txn.get(b"num-samples") or 0)
        for rec in range(1, n + 1):
          ex = self._example(txn, folder, rec)
          if ex is not None:
            yield f"{os.path.abspath(folder)}:{rec}", ex

  def _example(self, txn, folder, rec):
    buf, label = txn.get(b"image-%09d" % rec), txn.get(b"label-%09d" % rec)
    reason = "missing key" if buf is None or label is None else None
    if reason is None:
      try:
        rgb = images.decode(buf)  # the package's one decoder: RGBA composited, 16-bit scaled
      except images.DecodeError as e:
        reason = str(e)
    if reason is not None:
      logging.warning("lmdb_import: %s record %d: %s, skipped", folder, rec, reason)
      type(self).num_skipped += 1
      return None
    raw = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_UNCHANGED)
    if raw.dtype != np.uint8 or raw.ndim != 3 or raw.shape[2] != 3:  # kept as stored if RGB
      buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
    return {
      "image": bytes(buf),
      "label": label.decode("utf-8", "replace"),
      "source": f"{folder}:{rec}",
    }
