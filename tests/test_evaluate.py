"""Metrics (filtering, 1-NED, percentages), benchmark evaluation over LMDBs, prediction CLI."""

import io
import json
import os

import cv2
import pytest

from sslocr_jax import predict
from sslocr_jax.data import metrics
from sslocr_jax.data import sources
from sslocr_jax.evaluate import benchmarks
from sslocr_jax.train import checkpoint as ckpt_lib
from sslocr_jax.train import loop
from tests.helpers import load_config


@pytest.mark.parametrize("pred,gt,correct", [
    ("hello", "Hello", True),        # case
    ("HELLO!", "hello", True),       # punctuation
    ("it's", "its", True),
    ("hel lo", "Hel-lo", True),      # spaces / hyphens
    ("$12.50", "1250", True),
    ("hell0", "hello", False),       # a digit is a character
    ("héllo", "hello", False),       # accents are dropped, not mapped: "hllo"
    ("", "...", True),               # both empty after filtering
    ("a", "", False),
])
def test_metric_filtering(pred, gt, correct):
  assert metrics.score([pred], [gt]).correct == int(correct)


def test_edit_distance_and_one_minus_ned():
  assert metrics.edit_distance("kitten", "sitting") == 3
  assert metrics.edit_distance("", "abc") == 3
  assert metrics.one_minus_ned("abc", "abd") == pytest.approx(2 / 3)
  assert metrics.one_minus_ned("ab", "abcd") == pytest.approx(0.5)  # / the longer length
  assert metrics.one_minus_ned("", "") == 1.0


def test_reports_are_percentages_with_two_decimals():
  c = metrics.score(["a", "b", "x"], ["A", "b", "c"])
  assert c.report() == {"samples": 3, "accuracy": 66.67, "one_minus_ned": 66.67}
  total = metrics.average([c, metrics.score(["z"], ["z"])])  # weighted by samples
  assert total.report() == {"samples": 4, "accuracy": 75.0, "one_minus_ned": 75.0}
  table = metrics.format_table({"x": c.report(), "average": total.report()})
  assert "accuracy %" in table and "66.67" in table and table.splitlines()[-1].startswith("average")


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
  """A fine-tuning smoke workdir as `loop.train` writes it (config.json, checkpoints/<step>),
  saved at initialisation (compiling a train step only to change the weights costs time)."""
  workdir = tmp_path_factory.mktemp("finetune")
  config = load_config("finetune", "smoke")
  (workdir / "config.json").write_text(config.to_json_best_effort())
  checkpointer = ckpt_lib.Checkpointer(str(workdir / "checkpoints"), async_save=False)
  checkpointer.save(0, loop.setup(config)["state"])
  checkpointer.close()
  return str(workdir)


def _lines(n, seed):
  src = sources.SyntheticSource(n, seed=seed)
  return [(src[i]["image"], src[i]["label"]) for i in range(n)]


def test_benchmark_evaluation_over_lmdbs(finetuned, tmp_path, capsys):
  root = tmp_path / "benchmarks"
  a, b = _lines(7, seed=1), _lines(5, seed=2)
  sources.write_lmdb(str(root / "IIIT5k_3000"), a)
  sources.write_lmdb(str(root / "more" / "SVT"), b[:2] + [(b"not an image", "lost")] + b[2:])
  config = load_config("evaluate", "smoke")
  config.checkpoint, config.data.lmdb_root = finetuned, str(root)
  results = benchmarks.run(config, str(tmp_path / "out"))
  with open(tmp_path / "out" / "results.json") as f:
    assert json.load(f) == results
  assert list(results) == ["IIIT5k_3000", "more/SVT", "average"]
  assert results["IIIT5k_3000"]["samples"] == 7 and results["IIIT5k_3000"]["skipped"] == 0
  assert results["more/SVT"]["samples"] == 5 and results["more/SVT"]["skipped"] == 1
  assert results["average"]["samples"] == 12
  # The figures are those of the recognizer on the same images (labels never shifted).
  rec = predict.Recognizer.from_checkpoint(finetuned, batch_size=16)
  per_set = []
  for name, lines in (("IIIT5k_3000", a), ("more/SVT", b)):
    texts = [t for t, _ in rec([im for im, _ in lines])]
    per_set.append(metrics.score(texts, [label for _, label in lines]))
    assert results[name] == {**per_set[-1].report(), "skipped": results[name]["skipped"]}
  assert results["average"] == metrics.average(per_set).report()
  out = capsys.readouterr().out
  assert "IIIT5k_3000" in out and "more/SVT" in out and "average" in out and "1-NED %" in out


def test_predict_cli(finetuned, tmp_path, capsys):
  folder = tmp_path / "images"
  (folder / "sub").mkdir(parents=True)
  for i, (image, _) in enumerate(_lines(3, seed=3)):
    cv2.imwrite(str(folder / "sub" / f"{i}.png"), image[..., ::-1])
  (folder / "broken.jpg").write_bytes(b"nope")
  out = io.StringIO()
  bad = predict.run(finetuned, [str(folder)], batch_size=2, out=out)
  assert bad == 1 and "broken.jpg" in capsys.readouterr().err
  lines = out.getvalue().splitlines()
  assert [ln.split("\t")[0] for ln in lines] == [str(folder / "sub" / f"{i}.png") for i in range(3)]
  for line in lines:
    path, text, conf = line.split("\t")
    assert os.path.exists(path) and 0.0 <= float(conf) <= 1.0 and "\t" not in text
