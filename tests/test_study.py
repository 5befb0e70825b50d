"""The study driver end to end on configs/study.py:smoke: runs, manifest, report, skipping."""

import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = [
  "pretrain/dig-s0",
  "finetune/dig-f0.1-full-s0",
  "eval/dig-f0.1-full-s0/test",
  "finetune/scratch_vit-f0.1-full-s0",
  "eval/scratch_vit-f0.1-full-s0/test",
]


def _driver(study_dir, results, *extra):
  """Runs `python -m sslocr_jax.study`; returns (seconds, stdout)."""
  t0 = time.time()
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "sslocr_jax.study",
      "--config=configs/study.py:smoke",
      f"--study_dir={study_dir}",
      f"--results={results}",
      *extra,
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return time.time() - t0, proc.stdout


def _is_png(path):
  with open(path, "rb") as f:
    return f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_study_smoke_end_to_end(tmp_path):
  study_dir, results = tmp_path / "study", tmp_path / "docs" / "results.md"
  _driver(study_dir, results)

  manifest = json.loads((study_dir / "manifest.json").read_text())
  assert sorted(manifest["runs"]) == sorted(RUNS)
  for name in RUNS:
    run = manifest["runs"][name]
    assert run["status"] == "done" and run["wall_s"] > 0, (name, run)
    assert "-m sslocr_jax.main" in run["command"]
    assert (study_dir / name / "study_done.json").exists()
  assert manifest["invocations"][-1]["ran"] == RUNS
  assert manifest["machine"]["cpu_count"] == os.cpu_count()
  assert manifest["test_set"]["samples"] == 32
  assert (study_dir / "data" / "synthetic_heldout_test" / "data.mdb").exists()
  evaluation = json.loads((study_dir / "eval/dig-f0.1-full-s0/test/results.json").read_text())
  assert evaluation["average"]["samples"] == 32

  text = results.read_text()
  assert "### test, protocol `full`" in text and "f=0.1" in text
  table = text.split("### test, protocol `full`")[1]
  assert "| dig |" in table and "| scratch_vit |" in table  # both arms in the results table
  assert "| dig | scratch_vit (full) |" in table  # the difference vs scratch
  assert "pretrain/dig-s0" in text and f"{os.cpu_count()} logical CPUs" in text
  assert "## Reading" in text and "To be written by a person" in text
  plots = results.parent / "results"
  names = sorted(os.listdir(plots))
  assert "accuracy_vs_fraction_test_full.png" in names and "pretrain_losses.png" in names
  assert any(n.startswith("dig-s0_dig_reconstruction") for n in names), names
  assert all(_is_png(plots / n) for n in names)
  for n in names:
    assert f"results/{n}" in text  # embedded in the report

  # The Reading text a person writes survives; a second invocation skips every finished run.
  results.write_text(text.replace("_To be written by a person", "Human notes. _To be"))
  seconds, out = _driver(study_dir, results)
  manifest = json.loads((study_dir / "manifest.json").read_text())
  last = manifest["invocations"][-1]
  assert last["ran"] == [] and sorted(last["skipped"]) == sorted(RUNS), last
  assert "ran 0, skipped 5" in out and seconds < 20, seconds
  assert "Human notes." in results.read_text()
  assert all(manifest["runs"][n]["wall_s"] > 0 for n in RUNS)  # wall times kept

  _, out = _driver(study_dir, results, "--dry_run", "--only=scratch")
  assert "done     finetune/scratch_vit-f0.1-full-s0" in out and "pretrain/dig" not in out
