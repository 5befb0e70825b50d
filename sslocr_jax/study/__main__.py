r"""The pretraining study driver: one part at a time, results committed, report regenerated.

    python -m sslocr_jax.study --config=configs/study.py:cpu --dry_run        # parts, minutes
    python -m sslocr_jax.study --config=configs/study.py:cpu --part=seqclr_maps_ctc \
        [--study_dir=runs/study] [--only=REGEX] [--dry_run] [--redo_stale]
    python -m sslocr_jax.study --config=configs/study.py:cpu --report_only

`--part` takes part names, claim names (all of a claim's parts) or `all`, comma-separated.
The cells of those parts whose committed result (docs/results/<part>/<cell>.json) has the
hash of their current configs are skipped; the others run, each a subprocess
`python -m sslocr_jax.main ...` in its own workdir under --study_dir (scratch space):

    STUDY_DIR/data/<test name>/              the held-out test LMDB (written once)
    STUDY_DIR/pretrain/<arm>-s0/             a pretraining (only if a cell left needs it)
    STUDY_DIR/finetune/<cell>/               a fine-tuning (early stopping, best/)
    STUDY_DIR/eval/<cell>/<set>/results.json configs/evaluate.py on best/
    STUDY_DIR/manifest.json                  commands, status, wall time of every run

After each run, every cell whose runs have all finished writes its result file (scores, hash,
wall times, commands; never checkpoints), and docs/results.md is regenerated from the
committed files at the end (its Reading section kept). Interrupted runs resume from their
workdir when the same command is rerun in the same sitting. A run finished with another
command is `stale` (`--redo_stale` deletes and reruns it). Before anything runs, the study is
checked (plan.check_study): encoders match between pretraining and fine-tuning, the test seed
is not a validation seed, every claim's cells are in some part.
"""

import os
import re
import time

from absl import app
from absl import flags
from ml_collections import config_flags

from sslocr_jax.study import plan
from sslocr_jax.study import report
from sslocr_jax.study import runner

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Study config (configs/study.py:V).", lock_config=True
)
_PART = flags.DEFINE_string("part", "", "Parts (or claims, or `all`) to run, comma-separated.")
_STUDY_DIR = flags.DEFINE_string("study_dir", "runs/study", "Scratch folder of the runs.")
_ONLY = flags.DEFINE_string("only", "", "Only the cells of --part whose name matches (re.search).")
_DRY_RUN = flags.DEFINE_bool(
  "dry_run", False, "Print the parts' estimates (or, with --part, its runs); run nothing."
)
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Regenerate the report; run nothing.")
_REDO_STALE = flags.DEFINE_bool(
  "redo_stale", False, "Delete the workdir of each stale run and run it again."
)
_RESULTS_DIR = flags.DEFINE_string(
  "results_dir", os.path.join(plan.ROOT, "docs", "results"), "Committed cell results."
)
_REPORT = flags.DEFINE_string(
  "report", os.path.join(plan.ROOT, "docs", "results.md"), "The report (Markdown)."
)


def dry_run_parts(study, results_dir: str) -> None:
  """One line per part: cells committed and left, estimated minutes of what is left."""
  planned = plan.make_plan(study)
  budget = study.cost.get("budget_min", 0)
  print(f"{'part':24s} {'claim':14s} cells  left  estimate (of the cells left)")
  for part in study.parts:
    cells = plan.cells(study, [part["name"]])
    left = runner.todo_cells(study, [part["name"]], planned, results_dir)
    runs = plan.for_cells(planned, [c["name"] for c in left])
    est, full = plan.minutes(study, runs), plan.part_minutes(study, part["name"])
    over = "  OVER BUDGET" if budget and full > budget else ""
    print(
      f"{part['name']:24s} {part['claim']:14s} {len(cells):5d} {len(left):5d}  "
      f"{est:6.0f} min (all: {full:.0f}){over}"
    )
  if budget:
    print(f"budget per part: {budget:g} min (at the step caps: early stopping only shortens)")
  else:
    print("no time estimate: study.cost has no measured rates for this variant")


def main(argv):
  del argv
  study = _CONFIG.value
  results_dir, study_dir = _RESULTS_DIR.value, _STUDY_DIR.value
  try:
    problems = plan.check_study(study)
    parts = plan.parts_of(study, _PART.value) if _PART.value else []
  except ValueError as e:  # an override naming no field, an unknown part
    raise SystemExit(f"error: {e}") from e
  if problems:
    raise SystemExit("error: " + "\n".join(problems))
  if _REPORT_ONLY.value:
    verdicts = report.write_report(study, results_dir, _REPORT.value)
    print(
      f"report {report.shown_path(_REPORT.value, _REPORT.value)}: "
      + ", ".join(f"{k} {v}" for k, v in verdicts.items())
    )
    return
  if not parts:
    if _DRY_RUN.value:
      return dry_run_parts(study, results_dir)
    raise app.UsageError("--part is required (or --dry_run / --report_only)")
  planned = plan.make_plan(study, parts)
  left = runner.todo_cells(study, parts, planned, results_dir)
  left = [c for c in left if not _ONLY.value or re.search(_ONLY.value, c["name"])]
  runs = plan.for_cells(planned, [c["name"] for c in left])
  print(
    f"study: parts {', '.join(parts)}: {len(left)} cells to run "
    f"(~{plan.minutes(study, runs):.0f} min), "
    f"{len(plan.cells(study, parts)) - len(left)} committed",
    flush=True,
  )
  if _DRY_RUN.value:
    return runner.dry_run(study, runs, study_dir)
  os.makedirs(study_dir, exist_ok=True)
  manifest = runner.Manifest(study_dir, study)
  manifest.data["test_set"] = runner.ensure_test_set(study, study_dir)
  t0 = time.time()
  ok = False
  commit = lambda run: runner.commit_results(study, runs, study_dir, manifest, results_dir)
  try:
    ok = runner.run_all(runs, study_dir, manifest, _REDO_STALE.value, on_done=commit)
  except KeyboardInterrupt:
    raise SystemExit(
      "study: interrupted (the running run saved a checkpoint); rerun the same command to resume"
    ) from None
  finally:
    manifest.invocation["wall_s"] = round(time.time() - t0, 2)
    manifest.save()
  verdicts = report.write_report(study, results_dir, _REPORT.value)
  inv = manifest.invocation
  print(
    f"study: ran {len(inv['ran'])}, skipped {len(inv['skipped'])} finished, failed "
    f"{len(inv['failed'])}, blocked {len(inv['blocked'])}, stale {len(inv['stale'])}; "
    f"report {report.shown_path(_REPORT.value, _REPORT.value)}: "
    + ", ".join(f"{k} {v}" for k, v in verdicts.items()),
    flush=True,
  )
  if not ok:
    raise SystemExit(1)


if __name__ == "__main__":
  app.run(main)
