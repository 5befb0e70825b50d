"""Hostile inputs and damaged workdirs (issue 18): every probe asserts its exact outcome.

One LMDB of mixed bad records goes through the pretraining (DiG) and fine-tuning data paths and
the benchmark evaluation; every kind of image file through predict; a fine-tuning workdir
(saved at initialisation: no train step is compiled) is rerun with another config, damaged,
and restored; each out-of-range config value is refused; the README's LMDB command is run.
"""

import hashlib
import io
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys

import cv2
import flax.linen as nn
import jax
import jax.numpy as jnp
import lmdb
import numpy as np
from PIL import Image
import pytest

from sslocr_jax import errors
from sslocr_jax import predict
from sslocr_jax.data import images
from sslocr_jax.data import pipeline
from sslocr_jax.data import sources
from sslocr_jax.evaluate import benchmarks
from sslocr_jax.methods import dig
from sslocr_jax.methods import recognition
from sslocr_jax.train import checkpoint as ckpt_lib
from sslocr_jax.train import config_checks
from sslocr_jax.train import loop
from sslocr_jax.train import state as state_lib
from tests.helpers import ROOT, fill_like, load_config

FINETUNE = "smoke,decoder=ctc"  # the cheapest recognizer to compile


def _line(value: int) -> np.ndarray:
  image = np.full((16, 48, 3), 255, np.uint8)
  image[4:12, 8:40] = value
  return image


def _hostile_lmdb(path: str) -> str:
  """Records 1..6 + num-samples=8: good, garbage bytes, empty image, no label key,
  out-of-charset label, good; records 7 and 8 do not exist."""
  sources.write_lmdb(
    path,
    [
      (_line(0), "hello"),
      (b"garbage bytes", "junk"),
      (b"", "empty"),
      (_line(40), "nolabel"),
      (_line(80), "caf\u00e9"),
      (_line(120), "world"),
    ],
  )
  env = lmdb.open(path)
  with env.begin(write=True) as txn:
    txn.delete(b"label-%09d" % 4)
    txn.put(b"num-samples", b"8")
  env.close()
  return path


BAD_RECORDS = {"undecodable image": 1, "empty image": 1, "no label key": 1, "no image key": 2}


def _bad(path):
  return {reason: n for (_, reason), n in sources.bad_records(path).items()}


def test_bad_records_through_pretraining_and_finetuning_views(tmp_path, caplog, capsys):
  path = _hostile_lmdb(str(tmp_path / "mixed"))
  dig_config = load_config("dig", "smoke")
  dig_config.data.source, dig_config.data.lmdb_paths = "lmdb", [path]
  views = pipeline.make_dataset(
    dig_config, dig.make_views, batch_size=1, shuffle=False, repeat=False, drop_remainder=False
  )
  assert sum(len(b["image1"]) for b in views) == 3  # hello, café, world
  assert _bad(path) == BAD_RECORDS
  ft = load_config("finetune", FINETUNE)
  ft.data.source, ft.data.lmdb_paths = "lmdb", [path]
  with caplog.at_level(logging.WARNING):
    batches = list(
      pipeline.make_dataset(
        ft, recognition.make_views, batch_size=1, shuffle=False, repeat=False, drop_remainder=False
      )
    )
  assert len(batches) == 2  # café: out of the printable94 charset
  assert _bad(path) == {**BAD_RECORDS, "label dropped (out_of_charset)": 1}
  assert f"LMDB {path} record 5 dropped" in caplog.text  # the record, not a pipeline index
  summary = (
    f"skipped records in {path}: 1 empty image, 1 label dropped (out_of_charset), "
    "2 no image key, 1 no label key, 1 undecodable image"
  )
  assert sources.bad_summary(path) == [summary]
  loop._report_skipped("end of run (step 3)")  # pylint: disable=protected-access
  out = capsys.readouterr().out  # the loop's line: every folder's summary
  assert out.startswith("end of run (step 3): skipped records in ") and summary in out
  assert loop._epoch_steps(dig_config) == 1  # 8 records (num-samples) / batch 8


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A fine-tuning workdir on the hostile LMDB as `loop.train` lays it out: config.json and
  checkpoints 1 and 2 (state + data iterator). The weights are filled without compiling an
  init (helpers.fill_like); predict and evaluate read params, model_state and step."""
  tmp = tmp_path_factory.mktemp("hostile")
  config = load_config("finetune", FINETUNE)
  config.data.source = "lmdb"
  config.data.lmdb_paths = [_hostile_lmdb(str(tmp / "data" / "mixed"))]
  batch = state_lib.example_batch(pipeline.batch_spec(config, recognition.make_views))
  variables = nn.unbox(
    jax.eval_shape(lambda r: recognition.init_variables(config, r, batch), jax.random.PRNGKey(0))
  )
  variables = fill_like(variables)
  dataset = pipeline.make_dataset(config, recognition.make_views)
  wd = tmp / "run"
  (wd / "checkpoints").mkdir(parents=True)
  (wd / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))
  checkpointer = ckpt_lib.Checkpointer(str(wd / "checkpoints"), async_save=False)
  for step in (1, 2):
    state = {"step": jnp.int32(step), **variables}
    checkpointer.save(step, state, iter(dataset))
  checkpointer.close()
  return str(wd), state, dataset


def _digest(folder) -> dict:
  out = {}
  for root, _, files in os.walk(folder):
    for f in files:
      p = os.path.join(root, f)
      with open(p, "rb") as fh:
        out[os.path.relpath(p, folder)] = hashlib.sha1(fh.read()).hexdigest()
  return out


def test_evaluation_counts_bad_records_per_benchmark(workdir, tmp_path, capsys):
  wd = workdir[0]
  root = tmp_path / "benchmarks"
  _hostile_lmdb(str(root / "mixed"))
  sources.write_lmdb(str(root / "clean"), [(_line(0), "a"), (_line(9), "b")])
  config = load_config("evaluate", FINETUNE)
  config.checkpoint, config.data.lmdb_root = wd, str(root)
  results = benchmarks.run(config, str(tmp_path / "out"))
  assert [
    (k, r["samples"], r.get("skipped")) for k, r in results.items() if k != "eval_charset"
  ] == [("clean", 2, 0), ("mixed", 3, 5), ("average", 5, None)]
  out = capsys.readouterr().out
  assert (
    f"checkpoint {wd}: step 2 from {wd}/checkpoints (the newest that restores; no best/ "
    "checkpoint), decoder ctc"
  ) in out
  header = next(line for line in out.splitlines() if line.startswith("benchmark"))
  assert header.split() == ["benchmark", "samples", "accuracy", "%", "1-NED", "%", "skipped"]
  assert next(line for line in out.splitlines() if line.startswith("mixed")).split()[-1] == "5"
  assert (
    f"skipped records in {root / 'mixed'}: 1 empty image, 2 no image key, 1 no label key, "
    "1 undecodable image"
  ) in out


def _image_files(folder):
  """Every kind of image file; returns {name: expected decode (or None: unreadable)}."""
  folder.mkdir()
  text = np.full((20, 60), 255, np.uint8)
  text[5:15, 10:50] = 0
  (folder / "empty.png").write_bytes(b"")
  (folder / "text.png").write_text("not an image")
  cv2.imwrite(str(folder / "one_pixel.png"), np.zeros((1, 1), np.uint8))
  cv2.imwrite(str(folder / "wide.png"), np.tile(text, (1, 60)))
  cv2.imwrite(str(folder / "tall.png"), np.tile(text, (60, 1)))
  cv2.imwrite(str(folder / "gray.png"), text)
  rgba = np.zeros((20, 60, 4), np.uint8)  # black text on a transparent (0, 0, 0, 0) background
  rgba[..., 3] = 255 - text
  Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
  cv2.imwrite(str(folder / "sixteen_bit.png"), text.astype(np.uint16) * 257)
  Image.fromarray(text).convert("P").save(folder / "palette.png")
  cv2.imwrite(str(folder / "rgb_equivalent.png"), text)  # what the RGBA one must read as
  rgb = np.repeat(text[..., None], 3, axis=2)
  return {
    "empty.png": None,
    "text.png": None,
    "one_pixel.png": np.zeros((1, 1, 3), np.uint8),
    "wide.png": np.tile(rgb, (1, 60, 1)),
    "tall.png": np.tile(rgb, (60, 1, 1)),
    "gray.png": rgb,
    "rgba.png": rgb,
    "sixteen_bit.png": rgb,
    "palette.png": rgb,
    "rgb_equivalent.png": rgb,
  }


def test_every_image_kind_through_predict(workdir, tmp_path, capsys):
  wd = workdir[0]
  folder = tmp_path / "images"
  expected = _image_files(folder)
  for name, want in expected.items():
    if want is None:
      with pytest.raises(images.DecodeError):
        images.read(str(folder / name))
    else:
      np.testing.assert_array_equal(images.read(str(folder / name)), want, err_msg=name)
  # Light text on a transparent background is composited onto black, so it stays readable.
  light = np.zeros((4, 4, 4), np.uint8)
  light[1:3, 1:3] = 255
  assert images.to_rgb(light)[0, 0].tolist() == [0, 0, 0]
  assert images.to_rgb(light)[1, 1].tolist() == [255, 255, 255]
  out = io.StringIO()
  assert predict.run(wd, [str(folder)], batch_size=16, out=out) == 2  # evaluate's size
  err = capsys.readouterr().err
  assert f"cannot decode image {folder / 'empty.png'}: empty image (0 bytes)" in err
  assert f"cannot decode image {folder / 'text.png'}: undecodable image (12 bytes)" in err
  assert (
    f"loaded step 2 from {wd}/checkpoints (the newest that restores; no best/ checkpoint)" in err
  )
  rows = dict(line.split("\t", 1) for line in out.getvalue().splitlines())
  assert sorted(os.path.basename(p) for p in rows) == sorted(
    n for n, v in expected.items() if v is not None
  )
  assert rows[str(folder / "rgba.png")] == rows[str(folder / "rgb_equivalent.png")]


def test_rerun_with_another_config_is_refused_and_leaves_the_workdir_untouched(workdir):
  wd = workdir[0]
  before = _digest(wd)
  config = load_config("finetune", "smoke,decoder=attention")
  stored = json.loads((pathlib.Path(wd) / "config.json").read_text())
  config.data.source, config.data.lmdb_paths = "lmdb", stored["data"]["lmdb_paths"]
  config.total_steps, config.log_every = 50, 7  # resume-safe: not listed
  with pytest.raises(errors.UserError) as e:
    loop.train(config, wd)
  message = str(e.value)
  assert "\n" not in message and message.startswith(f"{wd} holds a run with another config")
  assert 'decoder ("ctc" -> "attention")' in message
  assert "total_steps" not in message.split(". Use a new")[0]
  assert _digest(wd) == before
  allowed = load_config("finetune", FINETUNE)
  allowed.data.source, allowed.data.lmdb_paths = "lmdb", stored["data"]["lmdb_paths"]
  allowed.total_steps, allowed.eval_every, allowed.mesh.data = 99, 3, 4
  assert config_checks.config_differences(stored, allowed) == []


def test_fallback_past_a_damaged_newest_checkpoint(workdir, tmp_path, caplog, capfd):
  wd, state, dataset = workdir
  run = tmp_path / "run"
  shutil.copytree(wd, run)
  (run / "checkpoints" / "2" / "state" / "_METADATA").unlink()
  with caplog.at_level(logging.WARNING):
    assert int(ckpt_lib.restore_params(str(run))["step"]) == 1
  assert (
    f"checkpoint {run}/checkpoints/2 does not restore (FileNotFoundError: Metadata file "
    f"(named _METADATA) does not exist at {run}/checkpoints/2/state.)" in caplog.text
  )
  assert 'Item "data"' not in caplog.text  # restoring params alone: no data-iterator warning
  # Resume: a truncated newest state file is skipped and set aside, so step 2 can be saved again.
  manifest = run / "checkpoints" / "2" / "state" / "manifest.ocdbt"
  manifest.write_bytes(manifest.read_bytes()[:10])
  checkpointer = ckpt_lib.Checkpointer(str(run / "checkpoints"), async_save=False)
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
  )
  state, step = checkpointer.restore(abstract, iter(dataset))
  assert step == 1 and int(state["step"]) == 1
  assert sorted(os.listdir(run / "checkpoints")) == ["1", "2.damaged"]
  assert "Traceback" not in capfd.readouterr().err  # no closed-event-loop callback noise
  checkpointer.save(2, state)
  checkpointer.close()
  # None restores: the error names the folder and every step's reason.
  (run / "checkpoints" / "1" / "state" / "_METADATA").unlink()
  (run / "checkpoints" / "2" / "state" / "_METADATA").unlink()
  with pytest.raises(
    errors.UserError,
    match=f"no checkpoint in {run}/checkpoints restores "
    r"\(step 2: FileNotFoundError: .*; step 1: FileNotFoundError: ",
  ):
    ckpt_lib.restore_params(str(run))


@pytest.mark.parametrize(
  "field, value, allowed",
  [
    ("mask_ratio", 1.5, "a number in [0.0, 1.0)"),
    ("mask_ratio", -0.2, "a number in [0.0, 1.0)"),
    ("batch_size", 0, "an integer >= 1"),
    ("total_steps", -5, "an integer >= 1"),
    ("num_windows", 0, "an integer >= 1"),
    ("data.fraction", 0.0, "a number in (0.0, 1.0]"),
    ("data.fraction", 1.5, "a number in (0.0, 1.0]"),
    ("log_every", 0, "an integer >= 1"),
    ("probe_every", -1, "an integer >= 0"),
    ("probe.steps", 0, "an integer >= 1"),
  ],
)
def test_out_of_range_values_are_refused(field, value, allowed):
  config = load_config("finetune" if field.startswith("data.fraction") else "dig", "smoke")
  parent, _, key = field.rpartition(".")
  (config[parent] if parent else config)[key] = value
  with pytest.raises(errors.UserError) as e:
    config_checks.check_values(config)
  assert str(e.value) == f"config.{field}={value!r} is out of range; allowed: {allowed}"
  config = load_config("dig", "smoke")
  config_checks.check_values(config)  # the shipped values pass
  config.batch_size = 10
  with pytest.raises(
    errors.UserError,
    match=r"^config.batch_size=10 is not divisible by the 8 "
    r"data-parallel devices \(mesh \{'data': 8, 'fsdp': 1\}\); allowed: a "
    r"multiple of 8$",
  ):
    config_checks.check_batch_divides(config, 8, {"data": 8, "fsdp": 1})
  config.init_from = "/no/such/run"  # checked at the start too, not after compiling
  with pytest.raises(
    errors.MissingPath,
    match=r"^config.init_from='/no/such/run' does not "
    "exist$",
  ):
    config_checks.check_values(config)


def test_best_checkpoint_breaks_ties_by_one_minus_ned_then_later_step(tmp_path):
  best = loop._BestCheckpoint(str(tmp_path), "val_accuracy")  # pylint: disable=protected-access
  state = {"w": jax.numpy.zeros(3)}
  for step, ned in ((4, 3.0), (8, 3.4), (12, 2.0), (16, 3.4)):
    best.update(step, state, {"val_accuracy": 0.0, "val_one_minus_ned": ned})
  best.close()
  saved = json.loads((tmp_path / "best" / "best.json").read_text())
  assert saved == {
    "step": 16,
    "metric": "val_accuracy",
    "value": 0.0,
    "others": {"val_one_minus_ned": 3.4},
  }
  assert ckpt_lib.checkpoint_steps(tmp_path / "best") == [16]
  assert predict.describe_choice(tmp_path, tmp_path / "best", 16, True) == (
    f"step 16 from {tmp_path}/best (best val_accuracy 0, val_one_minus_ned 3.4; no "
    "checkpoints/; --nouse_best for the latest)"
  )


def _parse_main_flags(monkeypatch, argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  # Importing main registers its parser of list fields.
  from sslocr_jax import main  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import

  monkeypatch.setattr(sys, "argv", argv)
  values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
  values(argv)
  return holder.value


def test_readme_lmdb_override(tmp_path, monkeypatch):
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  sources.write_lmdb(a, [(_line(0), "x")] * 3)
  sources.write_lmdb(b, [(_line(0), "y")] * 2)
  for value in (f"['{a}','{b}']", f"{a},{b}"):  # the README's form, and the short one
    config = _parse_main_flags(
      monkeypatch,
      [
        "main",
        "--config=configs/dig.py:smoke",
        "--config.data.source=lmdb",
        f"--config.data.lmdb_paths={value}",
        "--config.data.font_dirs=/fonts",
      ],
    )
    assert list(config.data.lmdb_paths) == [a, b] and list(config.data.font_dirs) == ["/fonts"]
    assert len(sources.make_source(config.data)) == 5
  assert len(sources.make_source({"source": "lmdb", "lmdb_paths": f"{a}, {b}"})) == 5  # a string
  ft = _parse_main_flags(
    monkeypatch,
    [
      "main",
      "--config=configs/finetune.py:smoke",
      "--config.val_data.source=lmdb",
      f"--config.val_data.lmdb_paths={b}",
    ],
  )
  assert list(ft.val_data.lmdb_paths) == [b] and len(sources.make_source(ft.val_data)) == 2


def test_readme_lmdb_command_reaches_the_data(tmp_path):
  """The README's command, verbatim: the override parses and the paths reach the source (which
  reports the first missing folder: exit 2, one line, no traceback; --verbose adds it)."""
  cmd = [
    sys.executable,
    "-m",
    "sslocr_jax.main",
    "--config=configs/dig.py:smoke",
    f"--workdir={tmp_path / 'run'}",
    "--config.data.source=lmdb",
    "--config.data.lmdb_paths=['/data/lmdb/a','/data/lmdb/b']",
  ]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == ["error: LMDB folder '/data/lmdb/a' does not exist"]
  assert not (tmp_path / "run").exists()


def test_user_error_verbose_shows_the_traceback(capsys):
  for verbose in (False, True):
    with pytest.raises(SystemExit) as e, errors.exit_on_user_error(verbose):
      sources.find_lmdbs("/no/such/folder")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.endswith("error: folder '/no/such/folder' does not exist\n")
    assert ("Traceback" in err) == verbose
