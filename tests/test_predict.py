"""predict: every checkpoint kind (workdir, checkpoints/ and step folders, exported
.safetensors + .json file and folder, a .pth with --model_config), every bad image kind, inputs
as folders / globs / stdin, tsv and jsonl output, exit codes."""

import importlib.util
import io
import json
import os
import sys

from absl.testing import flagsaver
import cv2
import flax.linen as nn
import jax
import numpy as np
import pytest

from sslocr_jax import errors
from sslocr_jax import predict
from sslocr_jax.data import augment
from sslocr_jax.export import cli as export_cli
from sslocr_jax.methods import recognition
from sslocr_jax.models import ctc_lexicon
from sslocr_jax.train import checkpoint as ckpt_lib
from sslocr_jax.train import resolve
from tests.helpers import fill_like, load_config
from tests.test_create_lmdb import bad_image_files

ARG = "smoke,decoder=ctc"


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
  """{kind: (checkpoint path, fallback config or None)} of one set of smoke CTC weights."""
  root = tmp_path_factory.mktemp("kinds")
  config = load_config("finetune", ARG)
  batch = {"image": np.zeros((2, 32, 128, 3), np.uint8)}
  abstract = jax.eval_shape(
    lambda r: nn.unbox(recognition.init_variables(config, r, batch)), jax.random.key(0)
  )
  state = {**fill_like(abstract, seed=1), "step": np.int64(7)}  # no init compile
  workdir = root / "ft"
  workdir.mkdir()
  (workdir / "config.json").write_text(config.to_json_best_effort())
  checkpointer = ckpt_lib.Checkpointer(str(workdir / "checkpoints"), async_save=False)
  checkpointer.save(7, state)
  checkpointer.close()
  export_cli.export_checkpoint(str(workdir), str(root / "export" / "model.safetensors"))
  kinds = {
    "workdir": (str(workdir), None),
    "checkpoints folder": (str(workdir / "checkpoints"), None),
    "step folder": (str(workdir / "checkpoints" / "7"), None),
    "exported file": (str(root / "export" / "model.safetensors"), None),
    "exported folder": (str(root / "export"), None),
  }
  if importlib.util.find_spec("torch"):  # writing a .pth needs torch (the test extra has none)
    export_cli.export_checkpoint(str(workdir), str(root / "official.pth"), fmt="pt")
    os.remove(root / "official.json")  # an official release has no model JSON
    kinds["official .pth + config"] = (str(root / "official.pth"), config)
  return kinds


def test_resolve_every_checkpoint_kind(kinds):
  ref = resolve.resolve(*kinds["workdir"])
  assert ref.step == 7 and ref.config.decoder == "ctc"
  flat = lambda tree: {
    jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)
  }
  want = flat(ref.params)
  for kind, (path, config) in kinds.items():
    r = resolve.resolve(path, config)
    got = flat(r.params)
    assert sorted(got) == sorted(want), kind
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=f"{kind}: {k}")
    assert (r.config.model.embed_dim, r.config.charset, r.config.max_len) == (
      32,
      "printable94",
      25,
    ), kind
  if "official .pth + config" in kinds:
    with pytest.raises(ValueError, match="config"):
      resolve.resolve(kinds["official .pth + config"][0])
  with pytest.raises(FileNotFoundError, match="does not exist"):
    resolve.resolve(kinds["workdir"][0] + "-typo")


def test_predict_every_bad_image_kind_and_inputs(kinds, tmp_path, capsys):
  folder = tmp_path / "in"
  (folder / "sub").mkdir(parents=True)
  files = bad_image_files()
  for name, (data, _) in files.items():
    (folder / "sub" / name).write_bytes(data)
  wide = np.random.default_rng(0).integers(0, 255, (20, 3000, 3), np.uint8)
  cv2.imwrite(str(folder / "wide.png"), wide)
  cv2.imwrite(str(folder / "tall.png"), wide.transpose(1, 0, 2).copy())
  (folder / "notes.txt").write_text("not an image extension: not searched")
  rec = predict.Recognizer.from_checkpoint(kinds["exported folder"][0], batch_size=4)
  out = io.StringIO()
  stdin = io.StringIO(f"{folder / 'sub' / 'rgb.png'}\n\n{folder / 'nope.png'}\n")
  bad = predict.run(
    kinds["exported folder"][0],
    [str(folder), str(folder / "sub" / "g*.png"), "-"],
    batch_size=4,
    out=out,
    fmt="jsonl",
    stdin=stdin,
  )
  err = capsys.readouterr().err
  rows = [json.loads(ln) for ln in out.getvalue().splitlines()]
  names = [os.path.relpath(r["path"], folder) for r in rows]
  good = sorted(f"sub/{n}" for n, (_, want) in files.items() if not isinstance(want, str))
  # Folder (sorted, recursive), then the glob's gray*.png, then stdin's path; input order kept.
  assert names == good + ["tall.png", "wide.png", "sub/gray.png", "sub/gray16.png", "sub/rgb.png"]
  assert bad == 5
  for n, (_, want) in files.items():
    if isinstance(want, str):
      line = next(
        ln
        for ln in err.splitlines()
        if f"warning: cannot decode image {folder / 'sub' / n}: " in ln
      )
      assert want in line and line.endswith(", skipped"), line
  assert f"warning: {folder / 'nope.png'}: no such file or folder, skipped" in err
  assert "5 of 16 inputs could not be recognized" in err
  # Each decodable kind is read as its correctly decoded RGB array (RGBA on white, 16-bit
  # scaled, palette expanded): the same text and confidence as recognizing that array.
  by_name = {n: r for n, r in zip(names, rows)}
  for n, (_, want) in files.items():
    if not isinstance(want, str):
      ((text, conf),) = rec([want])
      assert by_name[f"sub/{n}"]["text"] == text, n
      assert by_name[f"sub/{n}"]["confidence"] == pytest.approx(conf, abs=2e-4), n


def test_cli_exit_codes_tsv_and_stdin(kinds, tmp_path, monkeypatch, capsys):
  """predict.main as `app.run` calls it (its return value or SystemExit is the exit status); in
  process:
  a subprocess would spend seconds importing jax and compiling again."""
  good = tmp_path / "a.png"
  cv2.imwrite(str(good), bad_image_files()["rgb.png"][1])
  (tmp_path / "b.png").write_bytes(b"")
  pth, config = kinds.get("official .pth + config", kinds["exported file"])
  monkeypatch.setattr(sys, "stdin", io.StringIO(f"{good}\n{tmp_path / 'b.png'}\n"))
  with flagsaver.flagsaver(checkpoint=pth, model_config=config, batch_size=8):
    assert predict.main(["predict", "-"]) == 1
  out, err = capsys.readouterr()
  path, text, conf = out.strip().split("\t")
  assert path == str(good) and 0 <= float(conf) <= 1
  assert f"warning: cannot decode image {tmp_path / 'b.png'}: empty image (0 bytes), skipped" in err
  assert "loaded method=recognition, model (name=vit" in err and f"[{pth}]" in err
  with flagsaver.flagsaver(checkpoint=kinds["exported file"][0]):
    assert predict.main(["predict", str(good)]) == 0
  assert capsys.readouterr().out.split("\t")[:2] == [path, text]  # same weights, same text
  if pth.endswith(".pth"):
    with flagsaver.flagsaver(checkpoint=pth), pytest.raises(SystemExit) as e:  # no --model_config
      predict.main(["predict", str(good)])
    assert e.value.code == 2 and "--model_config=configs/evaluate.py:dig_official" in (
      capsys.readouterr().err
    )
  with flagsaver.flagsaver(checkpoint=kinds["workdir"][0]), pytest.raises(SystemExit) as e:
    predict.main(["predict", str(tmp_path / "*.jpg")])
  err = capsys.readouterr().err
  assert e.value.code == 2
  assert "no file matches the pattern" in err and "error: no images found" in err


def test_lexicon_decoding_through_the_recognizer(kinds, tmp_path):
  """`use_lexicon`: with no word near any reading the texts are the greedy predictor's, and
  the confidence is P_ctc(text) of the model's frames; a non-CTC model is refused."""
  rec = predict.Recognizer.from_checkpoint(kinds["workdir"][0], batch_size=8)
  images = np.random.default_rng(0).integers(0, 256, (5, 32, 128, 3), np.uint8)
  greedy = rec.recognize(images)[0]
  words = tmp_path / "words.txt"
  words.write_text("qqqqqqqqqqqqqqqqqqqqqqqqq\n", encoding="utf-8")
  texts, confs = rec.use_lexicon(str(words)).recognize(images)
  assert texts == greedy
  logits = np.asarray(
    recognition.ctc_logits(rec.params, rec.model_state, images, rec.config), np.float64
  )
  lp = ctc_lexicon.log_softmax(logits)
  cs = recognition.charset_from_config(rec.config)
  for row, conf in zip(lp, confs):
    ids = ctc_lexicon.greedy(row, cs.pad, ignore=(cs.eos,))
    assert conf == pytest.approx(np.exp(ctc_lexicon.ctc_log_likelihood(row, ids, cs.pad)))
  assert rec.use_lexicon("").recognize(images)[0] == greedy
  rec.config = load_config("finetune", "smoke,decoder=attention")
  with pytest.raises(errors.UserError, match="needs a CTC model"):
    rec.use_lexicon(str(words))


def test_reading_width_keeps_a_long_line_s_aspect_up_to_max_width():
  """The width rule: the line's width at the model's height, in steps of 32, never narrower
  than trained; only a ResNet (no TPS) + CTC model reads wider than trained."""
  resnet = load_config("finetune", "smoke,decoder=ctc,encoder=resnet")
  assert predict.reading_max_width(resnet) == 256
  for arg in ("smoke,decoder=ctc", "smoke,decoder=attention,encoder=resnet"):
    assert predict.reading_max_width(load_config("finetune", arg)) == 128
  resnet_tps = load_config("finetune", "smoke,decoder=ctc,encoder=resnet")
  resnet_tps.model.tps = True
  assert predict.reading_max_width(resnet_tps) == 128
  width = lambda h, w, top=256: predict.reading_width((h, w, 3), resnet, top)
  assert [width(32, 60), width(32, 150), width(32, 200), width(64, 400), width(32, 900)] == [
    128,  # a short word is stretched to the trained width, as in training
    160,
    192,  # 200 -> the nearest multiple of 32
    192,  # 400 at height 64 is 200 at 32
    256,  # capped
  ]
  assert width(32, 900, top=128) == 128  # max_width = trained width: the old squeeze


def test_recognizer_reads_each_width_as_recognize_does():
  """Mixed widths in one call: each image's text is `recognize` of that image resized to its
  reading width (one compile per width, input order kept); max_width=128 squeezes as before."""
  config = load_config("finetune", "smoke,decoder=ctc,encoder=resnet")
  batch = {"image": np.zeros((2, 32, 128, 3), np.uint8)}
  abstract = jax.eval_shape(
    lambda r: nn.unbox(recognition.init_variables(config, r, batch)), jax.random.key(0)
  )
  state = fill_like(abstract, seed=3)
  rec = predict.Recognizer(config, state["params"], state["model_state"], batch_size=4)
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (32, w, 3), np.uint8) for w in (300, 90, 170, 310, 128)]
  got = rec(images)
  assert [rec.resize(im).shape[1] for im in images] == [256, 128, 160, 256, 128]
  for im, (text, conf) in zip(images, got):
    texts, confs = rec.recognize(rec.resize(im)[None])
    assert (text, conf) == pytest.approx((texts[0], confs[0]))
  squeeze = predict.Recognizer(
    config, state["params"], state["model_state"], batch_size=4, max_width=128
  )
  fixed = np.stack([augment.resize(im, 32, 128) for im in images])
  assert squeeze(images) == list(zip(*squeeze.recognize(fixed)))
