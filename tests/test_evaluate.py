"""Metrics (filtering, 1-NED, percentages), benchmark evaluation over LMDBs, prediction CLI."""

import io
import json
import os

import cv2
import numpy as np
import pytest

from sslocr_jax import predict
from sslocr_jax.data import charset as charset_lib
from sslocr_jax.data import metrics
from sslocr_jax.data import sources
from sslocr_jax.evaluate import benchmarks
from sslocr_jax.evaluate import failures
from sslocr_jax.train import checkpoint as ckpt_lib
from tests.helpers import fill_like
from tests.helpers import load_config


@pytest.mark.parametrize(
  "pred,gt,correct",
  [
    ("hello", "Hello", True),  # case
    ("HELLO!", "hello", True),  # punctuation
    ("it's", "its", True),
    ("hel lo", "Hel-lo", True),  # spaces / hyphens
    ("$12.50", "1250", True),
    ("hell0", "hello", False),  # a digit is a character
    ("héllo", "hello", False),  # accents are dropped, not mapped: "hllo"
    ("", "...", True),  # both empty after filtering
    ("a", "", False),
  ],
)
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
  its weights filled without compiling an init or a train step (helpers.fill_like): evaluation
  and predict read params, model_state and step."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from sslocr_jax.methods import recognition  # pylint: disable=g-import-not-at-top

  workdir = tmp_path_factory.mktemp("finetune")
  config = load_config("finetune", "smoke")
  (workdir / "config.json").write_text(config.to_json_best_effort())
  batch = {
    "image": np.zeros((2, 32, 128, 3), np.uint8),
    "label": np.zeros((2, config.max_len + 1), np.int32),
  }
  abstract = jax.eval_shape(
    lambda r: nn.unbox(recognition.init_variables(config, r, batch)), jax.random.key(0)
  )
  checkpointer = ckpt_lib.Checkpointer(str(workdir / "checkpoints"), async_save=False)
  checkpointer.save(0, {**fill_like(abstract), "step": np.int64(0)})
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
  assert list(results) == ["IIIT5k_3000", "more/SVT", "average", "eval_charset"]
  assert results["eval_charset"] == "lower36"
  assert results["IIIT5k_3000"]["samples"] == 7 and results["IIIT5k_3000"]["skipped"] == 0
  assert results["more/SVT"]["samples"] == 5 and results["more/SVT"]["skipped"] == 1
  assert results["average"]["samples"] == 12
  # Folders named like standard benchmarks with other sample counts are warned about.
  assert results["IIIT5k_3000"]["warning"].startswith(
    "IIIT5k_3000 holds 7 samples; the standard IIIT5K benchmark has 3000"
  )
  assert "more/SVT holds 6 samples" in results["more/SVT"]["warning"]
  # The figures are those of the recognizer on the same images (labels never shifted).
  rec = predict.Recognizer.from_checkpoint(finetuned, batch_size=16)
  per_set = []
  for name, lines in (("IIIT5k_3000", a), ("more/SVT", b)):
    texts = [t for t, _ in rec([im for im, _ in lines])]
    per_set.append(metrics.score(texts, [label for _, label in lines]))
    assert results[name] == {
      **per_set[-1].report(),
      "skipped": results[name]["skipped"],
      "warning": results[name]["warning"],
    }
    rows = [json.loads(ln) for ln in (tmp_path / "out" / name / "predictions.jsonl").open()]
    assert [r["prediction"] for r in rows] == texts
    assert [r["label"] for r in rows] == [label for _, label in lines]
  assert [r["index"] for r in rows] == [0, 1, 3, 4, 5]  # record 3 (index 2) did not decode
  assert results["average"] == metrics.average(per_set).report()
  captured = capsys.readouterr()
  out = captured.out
  assert "IIIT5k_3000" in out and "more/SVT" in out and "average" in out and "1-NED %" in out
  assert "eval_charset=lower36" in out
  assert "evaluated more/SVT: 5 of 6 samples" in captured.err
  assert "warning: IIIT5k_3000 holds 7 samples" in captured.err


class _Oracle:
  """A stand-in recognizer that "reads" image k (filled with the value k) as PREDS[k]."""

  def __init__(self, preds, config):
    self.preds, self.step, self.batch_size, self.config = preds, 0, 4, config
    self.origin = "oracle"
    self.params = self.model_state = None
    self.charset = charset_lib.Charset.named(config.charset)
    ids = [list(self.charset.encode(p, 25)) for p in preds]

    def predict_batch(params, model_state, images):
      del params, model_state
      k = images[:, 0, 0, 0].astype(int)
      return np.array([ids[i] for i in k]), np.linspace(0.9, 0.5, len(self.preds))[k]

    self.predict_batch = predict_batch


# label, prediction, correct in lower36 / cased62 / printable94
_KNOWN = [
  ("Hello", "hello", (1, 0, 0)),
  ("World!", "World", (1, 1, 0)),
  ("abc", "abd", (0, 0, 0)),
  ("IC13", "IC13", (1, 1, 1)),
  ("it's", "its", (1, 1, 0)),
  ("Ok.", "OK.", (1, 0, 0)),
]


@pytest.mark.parametrize(
  "mode,accuracy", [("lower36", 5 / 6), ("cased62", 3 / 6), ("printable94", 1 / 6)]
)
def test_eval_charset_modes_on_a_hand_made_lmdb(mode, accuracy, tmp_path, monkeypatch, capsys):
  col = ("lower36", "cased62", "printable94").index(mode)
  root = tmp_path / "root"
  sources.write_lmdb(
    str(root / "mine"),
    [(np.full((8, 24, 3), k, np.uint8), label) for k, (label, _, _) in enumerate(_KNOWN)],
  )
  config = load_config("evaluate", "smoke")
  config.checkpoint, config.data.lmdb_root, config.eval_charset = "oracle", str(root), mode
  monkeypatch.setattr(
    predict.Recognizer,
    "from_checkpoint",
    lambda *a, **k: _Oracle([p for _, p, _ in _KNOWN], config),
  )
  results = benchmarks.run(config, str(tmp_path / "out"))
  assert results["eval_charset"] == mode and "warning" not in results["mine"]
  assert results["mine"]["accuracy"] == round(100 * accuracy, 2)
  assert f"eval_charset={mode} (" in capsys.readouterr().out
  rows = [json.loads(ln) for ln in (tmp_path / "out" / "mine" / "predictions.jsonl").open()]
  assert [r["correct"] for r in rows] == [bool(c[col]) for _, _, c in _KNOWN]
  assert rows[2] == {
    "index": 2,
    "label": "abc",
    "prediction": "abd",
    "confidence": 0.74,
    "correct": False,
    "ned": 0.3333,
  }
  grid = cv2.imread(str(tmp_path / "out" / "mine" / "worst_failures.png"))
  assert grid is not None and grid.shape[0] > 50


def test_worst_failures_order_and_count_warnings():
  s = failures.Samples("lower36", keep_worst=2)
  image = np.zeros((4, 4, 3), np.uint8)
  for i, (label, pred, conf) in enumerate(
    [("abcd", "abcx", 0.9), ("ab", "xy", 0.1), ("ab", "ab", 0.99), ("abcd", "xxxx", 0.8)]
  ):
    s.add(i, label, pred, conf, image)
  assert [(label, pred) for _, label, pred, _, _ in s.worst()] == [("abcd", "xxxx"), ("ab", "xy")]
  assert s.counts.samples == 4 and s.counts.correct == 1
  assert benchmarks.count_warning("IC13_857", 857) is None
  assert benchmarks.count_warning("IC13_1015", 1015) is None
  assert "has 857" in benchmarks.count_warning("eval/IC13_857", 1015)
  assert benchmarks.count_warning("IC15", 2077) is None
  assert (
    benchmarks.count_warning("SVTP", 645) is None and benchmarks.count_warning("svt", 647) is None
  )
  assert "has 645" in benchmarks.count_warning("SVTP", 647)
  assert benchmarks.count_warning("my_words", 12) is None


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


def test_worst_failures_grid_takes_labels_with_dollar_signs():
  """Labels are printable ASCII: "$" must not switch matplotlib into (failing) mathtext."""
  from sslocr_jax.evaluate import failures

  image = np.zeros((32, 128, 3), np.uint8)
  png = failures.grid_png([(image, "$5^", "$x_", 0.5, 1.0), (image, "a", "b", 0.1, 1.0)])
  assert png[:8] == b"\x89PNG\r\n\x1a\n"
