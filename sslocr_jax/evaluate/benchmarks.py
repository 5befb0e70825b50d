r"""Benchmark evaluation of a fine-tuned recognizer over LMDB folders.

    python -m sslocr_jax.main --config=configs/evaluate.py \
        --config.checkpoint=<finetune workdir> --config.data.lmdb_root=<folder> --workdir=OUT \
        [--config.eval_charset=lower36|cased62|printable94]

Finds every LMDB under `data.lmdb_root` (`sources.find_lmdbs`: IIIT5k_3000, SVT, IC13_857, ...),
recognizes each with greedy decoding (no augmentation), prints one table (benchmark, samples,
word accuracy %, 1-NED %, with the sample-weighted average) headed by the scoring mode, and
writes `OUT/results.json`:

    {"IIIT5k_3000": {"samples": 3000, "accuracy": 91.23, "one_minus_ned": 96.5, "skipped": 0},
     ..., "average": {"samples": ..., "accuracy": ..., "one_minus_ned": ...},
     "eval_charset": "lower36"}

Both figures are percentages with 2 decimals. `eval_charset` is the scoring mode
(data/metrics.py): `lower36` the standard protocol (lowercase, [0-9a-z] only), `cased62`
(case kept), `printable94` (case and punctuation kept), as parseq's and mmocr's.
`samples` counts the records evaluated; `skipped` the unreadable ones (empty or undecodable
image, missing key), a column of the table, with one line per folder giving the reasons.
Per benchmark, `OUT/<benchmark>/predictions.jsonl` holds one row per sample (index, label,
prediction, confidence, correct, ned) and `OUT/<benchmark>/worst_failures.png` a grid of the
worst failures (evaluate/failures.py). A folder named like a standard benchmark with another
sample count than the standard one (`STANDARD_COUNTS`) is warned about (and the warning kept
in its results entry): a truncated copy or a different split changes the figures.
Without `data.lmdb_root`, the run's validation set (`val_data`: synthetic lines in held-out
fonts by default) is evaluated as one benchmark, `synthetic_heldout`.

The model comes from the checkpoint's config.json (the eval config's model fields are only a
fallback for a checkpoint without one); the weights from its best/ (`use_best`) or latest
checkpoint. Single process (a multi-host run evaluates on process 0's view only: not supported).
"""

import json
import os
import sys
import time

import jax
import ml_collections

from sslocr_jax import errors
from sslocr_jax import paths
from sslocr_jax import predict
from sslocr_jax.data import charset as charset_lib
from sslocr_jax.data import metrics
from sslocr_jax.data import sources
from sslocr_jax.evaluate import failures
from sslocr_jax.methods import recognition
from sslocr_jax.train import evaluation
from sslocr_jax.train import resolve


# The sample counts of the standard benchmark LMDBs (clovaai/deep-text-recognition-benchmark's
# evaluation data, and parseq's IC13_1015 / IC15_2077 versions), by the folder name's first part.
STANDARD_COUNTS = {
  "iiit5k": (3000,),
  "svt": (647,),
  "ic13": (857, 1015),
  "ic15": (1811, 2077),
  "svtp": (645,),
  "cute80": (288,),
}


def count_warning(name: str, samples: int) -> str | None:
  """A warning when the folder `name` (e.g. "IC13_857", "eval/SVT") looks like a standard
  benchmark holding another number of samples; None otherwise."""
  parts = os.path.basename(name.rstrip("/")).lower().split("_")
  expected = STANDARD_COUNTS.get(parts[0])
  if expected is None:
    return None
  if len(parts) > 1 and parts[1].isdigit() and int(parts[1]) in expected:
    expected = (int(parts[1]),)  # IC13_857 must hold 857, not 1015
  if samples in expected:
    return None
  return (
    f"{name} holds {samples} samples; the standard {parts[0].upper()} benchmark has "
    f"{' or '.join(map(str, expected))}: its figures are not comparable to published ones"
  )


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
    out.append((name, ml_collections.ConfigDict(dict(source="lmdb", lmdb_paths=[folder], **extra))))
  return out


def evaluate_set(rec, run_config, name: str, data, eval_charset: str) -> failures.Samples:
  """Scored samples of one benchmark, with a progress bar (terminal) and a closing line."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  total = len(sources.make_source(data))
  samples = failures.Samples(eval_charset)
  start = time.time()
  with tqdm(total=total, desc=name, unit="img", file=sys.stderr, disable=None, leave=False) as bar:
    for batch in evaluation.eval_dataset(recognition, run_config, data, rec.batch_size):
      ids, conf = rec.predict_batch(rec.params, rec.model_state, batch["image"])
      for k, row in enumerate(ids):
        samples.add(
          int(batch["index"][k]),
          str(batch["text"][k]),
          rec.charset.decode(row),
          float(conf[k]),
          batch["image"][k],
        )
      bar.update(len(ids))
  n = len(samples.rows)
  print(
    f"evaluated {name}: {n} of {total} samples in {time.time() - start:.1f} s",
    file=sys.stderr,
    flush=True,
  )
  samples.total = total
  return samples


def run(config, workdir: str) -> dict:
  """Evaluates `config.checkpoint` on every benchmark; returns (and writes) the results."""
  if not config.get("checkpoint", ""):
    raise errors.UserError("--config.checkpoint=<finetune workdir> is required")
  if jax.process_count() > 1:
    raise NotImplementedError("benchmark evaluation runs in a single process")
  eval_charset = config.get("eval_charset", "lower36")
  if eval_charset not in charset_lib.EVAL_CHARSETS:
    raise errors.UserError(
      f"config.eval_charset={eval_charset!r}; valid: {', '.join(charset_lib.EVAL_CHARSETS)}"
    )
  # Any checkpoint kind (train/resolve.py); the eval config describes the model of one that
  # carries no config.json (an exported or official state dict, a bare checkpoints folder).
  try:
    run_config = resolve.load_run_config(config.checkpoint)
  except FileNotFoundError:
    run_config = config
  rec = predict.Recognizer.from_checkpoint(
    config.checkpoint, use_best=config.use_best, batch_size=config.batch_size, config=run_config
  )
  run_config = rec.config
  out = paths.workdir_path(workdir)  # local folder or gs://... (etils.epath)
  out.mkdir(parents=True, exist_ok=True)
  results, counts = {}, []
  for name, data in benchmark_sets(config, run_config):
    samples = evaluate_set(rec, run_config, name, data, eval_charset)
    results[name] = {**samples.counts.report(), "skipped": samples.total - samples.counts.samples}
    warning = count_warning(name, samples.total)
    if warning:
      print(f"warning: {warning}", file=sys.stderr, flush=True)
      results[name]["warning"] = warning
    samples.write(out / name)
    counts.append(samples.counts)
  results["average"] = metrics.average(counts).report()
  results["eval_charset"] = eval_charset
  print(
    f"checkpoint {config.checkpoint}: {rec.origin or f'step {rec.step}'}, decoder "
    f"{run_config.decoder}"
  )
  print(metrics.format_table(results), flush=True)
  for _, data in benchmark_sets(config, run_config):  # per folder and reason: what `skipped` counts
    for folder in sources.lmdb_paths(data.get("lmdb_paths", None)):
      for line in sources.bad_summary(folder):
        print(line, flush=True)
  paths.write_text(out / "results.json", json.dumps(results, indent=2))
  return results
