r"""Benchmark evaluation of a fine-tuned recognizer over LMDB folders.

    python -m sslocr_jax.main --config=configs/evaluate.py \
        --config.checkpoint=<finetune workdir> --config.data.lmdb_root=<folder> --workdir=OUT

Finds every LMDB under `data.lmdb_root` (`sources.find_lmdbs`: IIIT5k_3000, SVT, IC13_857, ...),
recognizes each with greedy decoding (no augmentation), prints one table (benchmark, samples,
word accuracy %, 1-NED %, with the sample-weighted average) and writes `OUT/results.json`:

    {"IIIT5k_3000": {"samples": 3000, "accuracy": 91.23, "one_minus_ned": 96.5, "skipped": 0},
     ..., "average": {"samples": ..., "accuracy": ..., "one_minus_ned": ...}}

Both figures are percentages with 2 decimals (data/metrics.py: lowercase, [0-9a-z] only).
`samples` counts the records evaluated; `skipped` the unreadable ones (empty or undecodable
image, missing key), a column of the table, with one line per folder giving the reasons.
Without `data.lmdb_root`, the run's validation set (`val_data`: synthetic lines in held-out
fonts by default) is evaluated as one benchmark, `synthetic_heldout`.

The model comes from the checkpoint's config.json (the eval config's model fields are only a
fallback for a checkpoint without one); the weights from its best/ (`use_best`) or latest
checkpoint. Single process (a multi-host run evaluates on process 0's view only: not supported).
"""

import json
import os

import jax
import ml_collections

from sslocr_jax import errors
from sslocr_jax import paths
from sslocr_jax import predict
from sslocr_jax.data import metrics
from sslocr_jax.data import sources
from sslocr_jax.methods import recognition
from sslocr_jax.train import evaluation
from sslocr_jax.train import resolve


def benchmark_sets(config, run_config) -> list[tuple[str, ml_collections.ConfigDict]]:
  """[(name, data config)]: one per LMDB under data.lmdb_root, else the validation set."""
  root = config.data.get("lmdb_root", "")
  extra = {k: config.data[k] for k in ("num_threads", "prefetch") if k in config.data}
  if not root:
    return [("synthetic_heldout", run_config.get("val_data", None) or config.val_data)]
  folders = sources.find_lmdbs(root)
  if not folders:
    raise errors.MissingPath(f"no LMDB (folder with data.mdb) under data.lmdb_root={root!r}")
  out = []
  for folder in folders:
    name = os.path.relpath(folder, root)
    name = os.path.basename(os.path.abspath(folder)) if name == "." else name
    out.append((name, ml_collections.ConfigDict(dict(source="lmdb", lmdb_paths=[folder],
                                                     **extra))))
  return out


def run(config, workdir: str) -> dict:
  """Evaluates `config.checkpoint` on every benchmark; returns (and writes) the results."""
  if not config.get("checkpoint", ""):
    raise errors.UserError("--config.checkpoint=<finetune workdir> is required")
  if jax.process_count() > 1:
    raise NotImplementedError("benchmark evaluation runs in a single process")
  try:
    run_config = resolve.load_run_config(config.checkpoint)
  except FileNotFoundError:
    run_config = config  # a bare checkpoint folder: the eval config describes the model
  rec = predict.Recognizer.from_checkpoint(config.checkpoint, use_best=config.use_best,
                                           batch_size=config.batch_size, config=run_config)
  results, counts = {}, []
  for name, data in benchmark_sets(config, run_config):
    total = len(sources.make_source(data))
    batches = evaluation.eval_dataset(recognition, run_config, data, rec.batch_size)
    c = evaluation.evaluate_batches(rec.predict_batch, rec.params, rec.model_state, batches,
                                     rec.charset)
    results[name] = {**c.report(), "skipped": total - c.samples}
    counts.append(c)
  results["average"] = metrics.average(counts).report()
  print(f"checkpoint {config.checkpoint}: {rec.origin or f'step {rec.step}'}, decoder "
        f"{run_config.decoder}")
  print(metrics.format_table(results), flush=True)
  for _, data in benchmark_sets(config, run_config):  # per folder and reason: what `skipped` counts
    for folder in sources.lmdb_paths(data.get("lmdb_paths", None)):
      for line in sources.bad_summary(folder):
        print(line, flush=True)
  out = paths.workdir_path(workdir)  # local folder or gs://... (etils.epath)
  out.mkdir(parents=True, exist_ok=True)
  paths.write_text(out / "results.json", json.dumps(results, indent=2))
  return results
