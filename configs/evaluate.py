r"""Benchmark evaluation of a fine-tuned recognizer (evaluate/benchmarks.py).

    python -m sslocr_jax.main --config=configs/evaluate.py \
        --config.checkpoint=<finetune workdir> --config.data.lmdb_root=<folder> --workdir=OUT

Fields:
  checkpoint        fine-tuning workdir (its config.json gives the model; best/ or checkpoints/);
  use_best          evaluate WORKDIR/best/ (the best validation step) when present;
  data.lmdb_root    folder searched for LMDBs (every folder with a data.mdb is one benchmark);
                    empty: the run's validation set (synthetic lines in held-out fonts);
  batch_size        images per (fixed-size, padded) batch.
The variant arguments and every other field are those of configs/finetune.py: they describe
the model only for a checkpoint without config.json (e.g. `:encoder=resnet,decoder=ctc`).
"""

import importlib.util
import os


def _finetune():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "finetune.py")
  spec = importlib.util.spec_from_file_location("configs_finetune_for_evaluate", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  c = _finetune().get_config(arg)
  c.task = "evaluate"
  c.checkpoint = ""
  c.use_best = True
  c.data.lmdb_root = ""
  c.batch_size = 16 if "smoke" in (arg or "") else 256
  return c
