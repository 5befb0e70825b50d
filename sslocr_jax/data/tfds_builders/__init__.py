"""TFDS builders (array_record, built and read without TensorFlow).

    synthetic_lines   the built-in renderer: "train" (train fonts) / "test" (held-out fonts)
    lmdb_import       clovaai LMDB folders -> one TFDS split per group of folders

Features of both: image (PNG/JPEG bytes, decoded to uint8 [H, W, 3] RGB), label
(text). Read them with `sources.TfdsSource(builder_dir_or_name, split, data_dir)`.

    python -m sslocr_jax.data.tfds_builders synthetic_lines --data_dir D --num_train N
    python -m sslocr_jax.data.tfds_builders lmdb_import --data_dir D \
        --split train=/lmdb/MJ,/lmdb/ST --split test=/lmdb/IIIT5k_3000
"""

from sslocr_jax.data.tfds_builders.lmdb_import import LmdbImport
from sslocr_jax.data.tfds_builders.lmdb_import import LmdbImportConfig
from sslocr_jax.data.tfds_builders.synthetic_lines import SyntheticLines
from sslocr_jax.data.tfds_builders.synthetic_lines import SyntheticLinesConfig


def build(builder_cls, data_dir, config):
  """Builds `builder_cls(config=config)` as array_record under data_dir.

  Returns:
    the builder folder (`data_dir/name/config/version`) to give to TfdsSource.
  """
  builder = builder_cls(config=config, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()
  return str(builder.data_path)
