"""The study (configs/study.py, sslocr_jax/study/): planning, hashing and skipping, the paired
t interval and verdicts, the report regenerated from committed cells, and one tiny end-to-end
cell (scratch, smoke sizes: two subprocesses) that commits its result and is skipped after."""

import json
import math
import os
import subprocess
import sys

import pytest

from sslocr_jax import config_utils
from sslocr_jax.study import plan
from sslocr_jax.study import report
from sslocr_jax.study import runner
from sslocr_jax.study import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _study(variant):
  return config_utils.load_config(f"configs/study.py:{variant}")


# ---------------------------------------------------------------- statistics


def test_t_quantiles_and_the_paired_interval_by_hand():
  assert stats.t975(1) == 12.706 and stats.t975(2) == 4.303 and stats.t975(35) == 2.042
  assert stats.t975(10_000) == 1.960
  with pytest.raises(ValueError):
    stats.t975(0)
  # differences 1, 2, 3: mean 2, sd 1, half width 4.303 / sqrt(3) = 2.4843
  iv = stats.paired_interval({0: 11.0, 1: 12.0, 2: 13.0, 7: 99.0}, {0: 10.0, 1: 10.0, 2: 10.0})
  assert iv["n"] == 3 and iv["seeds"] == [0, 1, 2]
  assert iv["mean"] == pytest.approx(2.0) and iv["std"] == pytest.approx(1.0)
  assert iv["lo"] == pytest.approx(2 - 2.48434, abs=1e-4)
  assert iv["hi"] == pytest.approx(2 + 2.48434, abs=1e-4)
  assert stats.paired_interval({0: 1.0}, {0: 0.0}) is None  # one pair: no interval
  s = stats.spread([1.0, 2.0, 6.0])
  assert (s["n"], s["mean"], s["min"], s["max"]) == (3, 3.0, 1.0, 6.0)
  assert s["std"] == pytest.approx(math.sqrt(7))


def test_t_table_matches_scipy_where_installed():
  scipy_stats = pytest.importorskip("scipy.stats")
  for df, t in stats.T975.items():
    assert t == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=1e-3), df


def test_verdicts_from_the_interval():
  iv = lambda lo, hi: dict(lo=lo, hi=hi)
  assert stats.verdict(iv(0.5, 3.0), ">") == "reproduced"
  assert stats.verdict(iv(-3.0, -0.5), ">") == "refuted"
  assert stats.verdict(iv(-1.0, 2.0), ">") == "inconclusive"
  assert stats.verdict(None, ">") == "pending"
  # ">=": non-inferiority within the margin
  assert stats.verdict(iv(-0.5, 2.0), ">=", margin=1.0) == "reproduced"
  assert stats.verdict(iv(-4.0, -1.5), ">=", margin=1.0) == "refuted"
  assert stats.verdict(iv(-2.0, 0.5), ">=", margin=1.0) == "inconclusive"
  assert stats.claim_verdict(["reproduced", "reproduced"]) == "reproduced"
  assert stats.claim_verdict(["reproduced", "inconclusive"]) == "inconclusive"
  assert stats.claim_verdict(["reproduced", "pending"]) == "pending"
  assert stats.claim_verdict(["pending", "refuted"]) == "refuted"


# ---------------------------------------------------------------- planning


def test_cpu_study_parts_fit_the_budget_and_cover_every_claim():
  study = _study("cpu")
  assert plan.check_study(study) == []
  names = [p["name"] for p in study.parts]
  assert {p["claim"] for p in study.parts} == {
    "seqclr_maps",
    "dig_halves",
    "scarce",
    "frozen_floor",
  }
  for part in names:
    assert 60 < plan.part_minutes(study, part) <= study.cost.budget_min, part
  # every cell a claim compares is run by exactly one part, with >= 3 seeds
  assert len(study.seeds) >= 3
  groups = [plan.group_name(*c) for p in study.parts for c in p["cells"]]
  assert len(groups) == len(set(groups))
  assert plan.parts_of(study, "scarce") == [n for n in names if n.startswith("scarce")]
  assert plan.parts_of(study, "all") == names
  with pytest.raises(ValueError, match="unknown"):
    plan.parts_of(study, "nope")
  # the default variant holds the same cells, one part per claim
  default = _study("")
  assert sorted(plan.group_name(*c) for p in default.parts for c in p["cells"]) == sorted(groups)
  assert len(default.parts) == 4


def test_cpu_fine_tuning_is_scarce_stops_early_and_pretraining_outsees_it():
  study = _study("cpu")
  runs = plan.make_plan(study, ["scarce_resnet_f0.01"])
  ft = {r["meta"]["cell"]: plan.run_config(r) for r in runs if r["kind"] == "finetune"}
  pre = {r["name"]: plan.run_config(r) for r in runs if r["kind"] == "pretrain"}
  assert sorted(pre) == ["pretrain/seqclr_window-s0", "pretrain/siman-s0"]
  scratch, seqclr = ft["scratch_resnet-full-f0.01-s0"], ft["seqclr_window-full-f0.01-s0"]
  labeled = scratch["data"]["num_samples"] * scratch["data"]["fraction"]
  assert labeled == pytest.approx(2000)
  for c in pre.values():  # >= 10x the 1% subset
    assert c["total_steps"] * c["batch_size"] >= 10 * labeled
  assert scratch["early_stop_patience"] > 0 and scratch["eval_every"] == 100
  assert scratch["val_data"]["font_split"] == "heldout"
  assert scratch["val_data"]["seed"] != study.test.seed
  # separate recipes: the pretrained encoder is slower than the head, scratch is not
  assert seqclr["optim"]["lr_mult"]["encoder"] == 0.3 and seqclr["init_from"]
  assert scratch["optim"]["lr_mult"]["encoder"] == 1.0 and not scratch["init_from"]
  # seeds pair across arms: same labeled subset, seed from the cell
  assert {c["data"]["fraction_seed"] for c in ft.values()} == {1234}
  assert ft["siman-full-f0.01-s2"]["seed"] == 2


def test_cell_hash_follows_the_configs_not_the_folder_nor_the_probe():
  study = _study("smoke")
  runs = plan.make_plan(study)
  cell = next(c for c in plan.cells(study) if c["arm"] == "dig")
  h = plan.cell_hash(study, cell, runs)
  assert h == plan.cell_hash(study, cell, plan.make_plan(study))  # stable
  study.unlock()
  study.recipes.pretrained.vit.encoder_lr_mult = 0.25  # a recipe edit: another hash
  assert plan.cell_hash(study, cell, plan.make_plan(study)) != h
  study.recipes.pretrained.vit.encoder_lr_mult = 0.5
  study.arms[0]["overrides"] = study.arms[0]["overrides"] + ("probe_every=2",)
  assert plan.cell_hash(study, cell, plan.make_plan(study)) == h  # only logs: same hash
  study.arms[0]["overrides"] = study.arms[0]["overrides"][:-1] + ("total_steps=5",)
  assert plan.cell_hash(study, cell, plan.make_plan(study)) != h  # the pretraining changed


def test_check_study_names_what_is_wrong():
  study = _study("smoke")
  study.unlock()
  study.recipes.scratch.vit = dict(lr_multiplier=2.0)
  study.parts = study.parts + [plan_part("again", "smoke", [("dig", "full", 0.1)])]
  problems = "\n".join(plan.check_study(study))
  assert "'lr_multiplier' is unknown" in problems
  assert "dig-full-f0.1 is in parts smoke and again" in problems


def plan_part(name, claim, cells):
  return dict(name=name, claim=claim, cells=tuple(tuple(c) for c in cells))


# ---------------------------------------------------------------- report


def _record(study, cell, runs, acc, early=True):
  return dict(
    {k: cell[k] for k in ("name", "part", "claim", "arm", "protocol", "fraction", "seed")},
    encoder=cell["encoder"],
    hash=plan.cell_hash(study, cell, runs),
    scores={"test": dict(accuracy=acc, one_minus_ned=50.0 + acc / 2, samples=32)},
    finetune=dict(step_cap=4, stopped_at=4, early_stopped=early, best_step=2, best_val={}),
    wall_s=dict(pretrain=60.0 if cell["pretrain"] else None, finetune=30.0, evaluate=10.0),
    commands=["python -m sslocr_jax.main ..."],
  )


def _write(results_dir, study, runs, cell, acc):
  path = plan.cell_result_path(str(results_dir), cell)
  runner._write_json(path, _record(study, cell, runs, acc))
  return path


def test_report_from_committed_cells_keeps_the_reading(tmp_path):
  study = _study("smoke")
  study.unlock()
  study.seeds = (0, 1, 2)
  runs, results_dir, doc = plan.make_plan(study), tmp_path / "results", tmp_path / "results.md"
  cells = {c["name"]: c for c in plan.cells(study)}
  scratch = {0: 10.0, 1: 20.0, 2: 15.0}
  for s, acc in scratch.items():
    _write(results_dir, study, runs, cells[f"scratch_vit-full-f0.1-s{s}"], acc)
  verdicts = report.write_report(study, str(results_dir), str(doc), plot=False)
  assert verdicts == {"smoke": "pending"}  # DiG not run yet
  doc.write_text(doc.read_text().replace("_To be written by a person", "Human notes. _To be"))

  for s, d in {0: 1.0, 1: 2.0, 2: 3.0}.items():  # DiG beats scratch by 1, 2, 3 points
    _write(results_dir, study, runs, cells[f"dig-full-f0.1-s{s}"], scratch[s] + d)
  verdicts = report.write_report(study, str(results_dir), str(doc), plot=False)
  text = doc.read_text()
  assert verdicts == {"smoke": "inconclusive"}  # [-0.48, +4.48] straddles 0
  assert "+2.00 [-0.48, +4.48] (n=3)" in text and "| inconclusive |" in text
  assert "15.00 ± 5.00 (n=3)" in text  # scratch, mean ± std
  assert "Human notes." in text and "## Claims" in text and "part `smoke`" in text
  assert str(tmp_path) not in text and "/work/" not in text  # relative paths only

  # A recipe edit makes the committed cells stale: not compared, shown as such.
  study.recipes.pretrained.vit.encoder_lr_mult = 0.25
  verdicts = report.write_report(study, str(results_dir), str(doc), plot=False)
  assert verdicts == {"smoke": "pending"} and "3/6 (3 stale)" in doc.read_text()


def test_todo_cells_skip_committed_results_of_the_same_hash(tmp_path):
  study = _study("smoke")
  runs = plan.make_plan(study)
  cells = plan.cells(study)
  assert [c["name"] for c in runner.todo_cells(study, ["smoke"], runs, str(tmp_path))] == [
    c["name"] for c in cells
  ]
  _write(tmp_path, study, runs, cells[0], 5.0)
  left = runner.todo_cells(study, ["smoke"], runs, str(tmp_path))
  assert [c["name"] for c in left] == [cells[1]["name"]]
  todo = plan.for_cells(runs, [c["name"] for c in left])  # no pretraining for scratch
  assert [r["kind"] for r in todo] == ["finetune", "evaluate"]
  stale = dict(json.loads(open(plan.cell_result_path(str(tmp_path), cells[0])).read()))
  runner._write_json(plan.cell_result_path(str(tmp_path), cells[0]), dict(stale, hash="0" * 16))
  assert len(runner.todo_cells(study, ["smoke"], runs, str(tmp_path))) == 2


def test_a_finished_pretraining_commits_its_thinned_curves(tmp_path):
  """A pretraining folder as the loop and the driver leave it (no training here)."""
  study = _study("smoke")
  runs = plan.make_plan(study)
  pre = next(r for r in runs if r["kind"] == "pretrain")
  workdir = tmp_path / "study" / pre["workdir"]
  workdir.mkdir(parents=True)
  (workdir / "config.json").write_text(json.dumps(dict(total_steps=200, batch_size=8)))
  rows = [dict(step=s, loss=10.0 / s, probe_accuracy=s / 2, lr=1e-3) for s in range(1, 201)]
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (workdir / plan.DONE).write_text(json.dumps(dict(args=pre["args"], deps={}, finished="t")))
  manifest = runner.Manifest(str(tmp_path / "study"), study)
  manifest.data["runs"][pre["name"]] = dict(wall_s=12.5)
  written = runner.commit_results(
    study, runs, str(tmp_path / "study"), manifest, str(tmp_path / "results")
  )
  assert written == [str(tmp_path / "results" / "smoke" / "pretrain" / "dig-s0.json")]
  rec = json.loads(open(written[0]).read())
  assert rec["hash"] == plan.pretrain_hash(pre) and rec["wall_s"] == 12.5
  assert sorted(rec["curves"]) == ["loss", "probe_accuracy"]  # no lr: losses and probes
  loss = rec["curves"]["loss"]
  assert len(loss) <= 61 and loss[0] == [1, 10.0] and loss[-1] == [200, 0.05]
  assert "STUDY_DIR/pretrain/dig-s0" in rec["command"]
  # committed once: a second pass writes nothing (the fine-tunings have not run)
  assert (
    runner.commit_results(study, runs, str(tmp_path / "study"), manifest, str(tmp_path / "results"))
    == []
  )
  report.write_report(study, str(tmp_path / "results"), str(tmp_path / "results.md"))
  with open(tmp_path / "results" / "pretraining.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert "![pretraining curves](results/pretraining.png)" in (tmp_path / "results.md").read_text()


# ---------------------------------------------------------------- end to end


def _driver(tmp_path, *extra):
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "sslocr_jax.study",
      "--config=configs/study.py:smoke",
      f"--study_dir={tmp_path / 'study'}",
      f"--results_dir={tmp_path / 'results'}",
      f"--report={tmp_path / 'results.md'}",
      *extra,
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc.stdout


def test_a_scratch_cell_runs_commits_its_result_and_is_skipped_after(tmp_path):
  out = _driver(tmp_path, "--part=smoke", "--only=scratch")
  assert "1 cells to run" in out
  path = tmp_path / "results" / "smoke" / "scratch_vit-full-f0.1-s0.json"
  rec = json.loads(path.read_text())
  study = _study("smoke")
  cell = next(c for c in plan.cells(study) if c["arm"] == "scratch_vit")
  assert rec["hash"] == plan.cell_hash(study, cell, plan.make_plan(study))
  assert rec["scores"]["test"]["samples"] == 32
  assert 0 <= rec["scores"]["test"]["accuracy"] <= 100
  assert rec["finetune"]["step_cap"] == 4 and rec["finetune"]["best_step"] in (2, 4)
  assert rec["wall_s"]["finetune"] > 0 and rec["wall_s"]["pretrain"] is None
  assert all("STUDY_DIR/" in c and str(tmp_path) not in c for c in rec["commands"])
  assert not list((tmp_path / "results").rglob("*checkpoint*"))  # never checkpoints
  text = (tmp_path / "results.md").read_text()
  assert "scratch_vit-full-f0.1" in text and "1/2" in text

  # The committed cell is skipped: nothing runs (the run folders could be gone).
  manifest = json.loads((tmp_path / "study" / "manifest.json").read_text())
  out = _driver(tmp_path, "--part=smoke", "--only=scratch")
  assert "0 cells to run" in out and "ran 0" in out
  assert (
    json.loads((tmp_path / "study" / "manifest.json").read_text())["invocations"][-1]["ran"] == []
  )
  assert len(manifest["invocations"]) == 1
