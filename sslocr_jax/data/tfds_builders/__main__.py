"""CLI: build `synthetic_lines` or `lmdb_import` as array_record (see __init__)."""

import argparse

from sslocr_jax.data import tfds_builders as tb
from sslocr_jax.data.tfds_builders import lmdb_import


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("builder", choices=["synthetic_lines", "lmdb_import"])
  ap.add_argument("--data_dir", required=True)
  ap.add_argument("--config_name", default=None)
  ap.add_argument("--num_train", type=int, default=100_000)
  ap.add_argument("--num_test", type=int, default=2_000)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument(
    "--split", action="append", default=[], help="lmdb_import: name=folder[,folder...] (repeatable)"
  )
  a = ap.parse_args(argv)
  if a.builder == "synthetic_lines":
    cfg = tb.SyntheticLinesConfig(
      name=a.config_name or f"n{a.num_train}_s{a.seed}",
      num_train=a.num_train,
      num_test=a.num_test,
      seed=a.seed,
    )
    out = tb.build(tb.SyntheticLines, a.data_dir, cfg)
  else:
    splits = lmdb_import.parse_splits(";".join(a.split))
    cfg = tb.LmdbImportConfig(name=a.config_name or "imported", splits=splits)
    out = tb.build(tb.LmdbImport, a.data_dir, cfg)
  print(out)


if __name__ == "__main__":
  main()
