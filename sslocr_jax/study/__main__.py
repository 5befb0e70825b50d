r"""The pretraining study driver: pretrain, fine-tune, evaluate, write docs/results.md.

    python -m sslocr_jax.study --config=configs/study.py:cpu --study_dir=runs/study \
        [--only=REGEX] [--dry_run] [--results=docs/results.md] [--plots_dir=docs/results]

Every run is a subprocess `python -m sslocr_jax.main ...` in its own workdir under study_dir:

    STUDY_DIR/data/<test name>/                      the held-out test LMDB (written once)
    STUDY_DIR/pretrain/<arm>-s<seed>/                pretraining
    STUDY_DIR/finetune/<arm>-f<fraction>-<protocol>-s<seed>/
    STUDY_DIR/eval/<finetune name>/<set>/results.json   configs/evaluate.py on each test set
    STUDY_DIR/manifest.json                          commands, status, wall time of every run

A run is finished when the driver wrote `study_done.json` into its workdir after exit code 0
(or, for training, when metrics.jsonl and checkpoints/ reached config.total_steps). Finished
runs are skipped; interrupted ones are resumed by rerunning the same command. A finished run
whose recorded command differs from the current one, or that used a run redone since (e.g. a
fine-tuning whose pretraining was redone), is `stale`: it blocks the runs that need it until
its workdir is deleted, or `--redo_stale` deletes and reruns it (e.g. after a change of the
fine-tuning recipe in the study config). `--only` selects runs by name (re.search) and pulls
in the unfinished runs they need. Before anything runs, the study is checked: each arm's
pretraining encoder must be the one its fine-tuning config builds, and the test set's seed
must differ from the validation seed of every fine-tuning config. The report (tables, plots,
reconstruction grids) is rewritten from whatever has finished; the text of its "Reading"
section, written by a person, is kept.
"""

import os
import sys
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
_STUDY_DIR = flags.DEFINE_string("study_dir", None, "Folder of every run of the study.")
_ONLY = flags.DEFINE_string(
  "only", "", "Run only runs whose name matches (re.search), with the unfinished runs they need."
)
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the plan and the commands; run nothing.")
_REDO_STALE = flags.DEFINE_bool(
  "redo_stale", False, "Delete the workdir of each stale run and run it again."
)
_RESULTS = flags.DEFINE_string(
  "results", os.path.join(plan.ROOT, "docs", "results.md"), "The report (Markdown)."
)
_PLOTS_DIR = flags.DEFINE_string(
  "plots_dir", None, "Plots and grids (default: the report's path without .md, e.g. docs/results/)."
)


def main(argv):
  del argv
  study = _CONFIG.value
  if not _STUDY_DIR.value:
    raise app.UsageError("--study_dir is required")
  study_dir = _STUDY_DIR.value
  spec = next(
    (a.split("=", 1)[1] for a in sys.argv if a.startswith("--config=")), "configs/study.py"
  )
  try:
    problems = plan.check_study(study)
  except ValueError as e:  # an override naming no field
    raise SystemExit(f"error: {e}") from e
  if problems:
    raise SystemExit("error: " + "\n".join(problems))
  planned = plan.make_plan(study, study_dir)
  runs = plan.select(planned, _ONLY.value, lambda r: runner.run_state(r, study_dir) == "done")
  if _DRY_RUN.value:
    return runner.dry_run(runs, study_dir)
  os.makedirs(study_dir, exist_ok=True)
  manifest = runner.Manifest(study_dir, study)
  manifest.data["test_set"] = runner.ensure_test_set(study, study_dir)
  t0 = time.time()
  ok = False
  try:
    ok = runner.run_all(runs, study_dir, manifest, _REDO_STALE.value)
  except KeyboardInterrupt:
    raise SystemExit(
      "study: interrupted (the running run saved a checkpoint); rerun the same command to resume"
    ) from None
  finally:
    manifest.invocation["wall_s"] = round(time.time() - t0, 2)
    manifest.save()
  plots_dir = _PLOTS_DIR.value or os.path.splitext(_RESULTS.value)[0]
  report.write_report(study, planned, study_dir, manifest, _RESULTS.value, plots_dir, spec)
  inv = manifest.invocation
  print(
    f"study: ran {len(inv['ran'])}, skipped {len(inv['skipped'])} finished, failed "
    f"{len(inv['failed'])}, blocked {len(inv['blocked'])}, stale {len(inv['stale'])}; "
    f"report {_RESULTS.value}",
    flush=True,
  )
  if not ok:
    raise SystemExit(1)


if __name__ == "__main__":
  app.run(main)
