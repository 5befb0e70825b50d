r"""Benchmark evaluation of a fine-tuned recognizer (evaluate/benchmarks.py).

    python -m sslocr_jax.main --config=configs/evaluate.py \
        --config.checkpoint=<finetune workdir> --config.data.lmdb_root=<folder> --workdir=OUT

Fields:
  checkpoint        fine-tuning workdir (its config.json gives the model; best/ or checkpoints/);
  use_best          evaluate WORKDIR/best/ (the best validation step) when present;
  data.lmdb_root    folder searched for LMDBs (every folder with a data.mdb is one benchmark);
                    empty: the run's validation set (synthetic lines in held-out fonts);
  batch_size        images per (fixed-size, padded) batch;
  eval_charset      scoring mode: lower36 (the standard protocol: lowercase, [0-9a-z]), cased62
                    (case kept), printable94 (case and punctuation kept).
The variant arguments and every other field are those of configs/finetune.py: they describe
the model only for a checkpoint without config.json (e.g. `:encoder=resnet,decoder=ctc`).

An official DiG fine-tuned `.pth` (or `.safetensors`: models/torch_mapping.py) is evaluated with the
variant `dig_official` (ViT-Small, the release's `tf_decoder`: transformer.style=dig, d_model 512,
6 layers, 8 heads, d_inner 256, n_position 200; docs/export.md):

    python -m sslocr_jax.main --config=configs/evaluate.py:dig_official \
        --config.checkpoint=checkpoint-best.pth --config.data.lmdb_root=<folder> --workdir=OUT

`transformer.style` ("nrtr" | "dig") and `transformer.n_position` are declared here too, so
they can be overridden for other sizes (`:dig_official,size=base`).
"""

import os

from sslocr_jax import config_utils as cu


def _split_arg(arg):
  """(finetune.py's variant argument, dig_official flag)."""
  parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
  return ",".join(p for p in parts if p != "dig_official"), "dig_official" in parts


def get_config(arg=None):
  arg, dig_official = _split_arg(arg)
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "finetune.py")
  c = cu.load_config(f"{path}:{arg}" if arg else path)
  for key, default in (("style", "nrtr"), ("n_position", 200)):
    if key not in c.transformer:
      c.transformer[key] = default
  if dig_official:  # the release's `--decoder_name tf_decoder` (models/decoder.py)
    c.decoder = "transformer"
    c.transformer.update(
      style="dig",
      d_model=512,
      num_layers=6,
      num_heads=8,
      mlp_dim=256,
      n_position=200,
      dropout_rate=0.1,
    )
  c.task = "evaluate"
  c.checkpoint = ""
  c.use_best = True
  c.data.lmdb_root = ""
  c.eval_charset = "lower36"
  c.batch_size = 16 if "smoke" in (arg or "") else 256
  return c
