"""Sources: synthetic, LMDB (corrupt records, concatenation, errors), TFDS builders."""

import logging
import pickle

import lmdb
import ml_collections
import numpy as np
import pytest

from sslocr_jax.data import render
from sslocr_jax.data import sources


def _img(i, gray=False):
  """A [12, 20 + i] image whose value encodes i (to check label/image alignment)."""
  shape = (12, 20 + i) if gray else (12, 20 + i, 3)
  return np.full(shape, 10 * i, np.uint8)


def test_synthetic_source_matches_renderer():
  src = sources.SyntheticSource(10, seed=2)
  rec = src[4]
  img, label = render.Renderer(seed=2).render(4)
  assert len(src) == 10 and rec["label"] == label
  np.testing.assert_array_equal(rec["image"], img)
  assert pickle.loads(pickle.dumps(src))[4]["label"] == label
  with pytest.raises(IndexError):
    src[10]


def test_lmdb_round_trip_with_corrupt_record(tmp_path, caplog):
  path = str(tmp_path / "a")
  samples = [(_img(i, gray=(i == 1)), f"w{i}") for i in range(6)]
  samples[3] = (b"not an image", "w3")
  red = np.zeros((4, 5, 3), np.uint8)
  red[..., 0] = 255
  samples.append((red, "red"))
  assert sources.write_lmdb(path, samples) == 7
  src = sources.LmdbSource([path])
  assert len(src) == 7
  with caplog.at_level(logging.WARNING):
    recs = [src[i] for i in range(len(src))]
  assert recs[3] is None and src.num_bad == 1
  assert any(path in m and "record 4" in m for m in caplog.messages)
  for i in (0, 1, 2, 4, 5):  # the others stay aligned with their images
    assert recs[i]["label"] == f"w{i}"
    assert recs[i]["image"].shape == (12, 20 + i, 3)
    assert (recs[i]["image"] == 10 * i).all()
  np.testing.assert_array_equal(recs[6]["image"], red)  # RGB order kept
  again = pickle.loads(pickle.dumps(src))  # a grain worker's copy reopens lazily
  assert again[5]["label"] == "w5"


def test_lmdb_missing_key_and_concatenation(tmp_path, caplog):
  a, b = str(tmp_path / "a"), str(tmp_path / "sub" / "b")
  sources.write_lmdb(a, [(_img(i), f"a{i}") for i in range(3)])
  sources.write_lmdb(b, [(_img(i), f"b{i}") for i in range(2)])
  env = lmdb.open(b)
  with env.begin(write=True) as txn:
    txn.delete(b"label-000000002")
  env.close()
  src = sources.LmdbSource([a, b])
  assert len(src) == 5 and src.locate(3) == (1, 1)
  assert [src[i]["label"] for i in range(4)] == ["a0", "a1", "a2", "b0"]
  with caplog.at_level(logging.WARNING):
    assert src[4] is None
  assert any(b in m and "record 2" in m and "label" in m for m in caplog.messages)
  assert sources.find_lmdbs(str(tmp_path)) == sorted([a, b])


def test_lmdb_missing_or_empty_path(tmp_path):
  missing = str(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match="nope"):
    sources.LmdbSource([missing])
  with pytest.raises(FileNotFoundError, match="no data.mdb"):
    sources.LmdbSource([str(tmp_path)])
  empty = str(tmp_path / "empty")
  sources.write_lmdb(empty, [])
  with pytest.raises(ValueError, match="empty"):
    sources.LmdbSource([empty])


def test_make_source_dispatch(tmp_path):
  data = ml_collections.ConfigDict(
    dict(
      source="synthetic",
      num_samples=5,
      seed=0,
      font_split="heldout",
      font_dirs=[],
      lmdb_paths=[],
      tfds_name="",
      tfds_data_dir="",
      split="train",
    )
  )
  src = sources.make_source(data)
  assert isinstance(src, sources.SyntheticSource) and len(src) == 5
  path = str(tmp_path / "l")
  sources.write_lmdb(path, [(_img(0), "x")])
  data.source, data.lmdb_paths = "lmdb", [path]
  assert sources.make_source(data)[0]["label"] == "x"
  data.source = "webdataset"
  with pytest.raises(ValueError, match="synthetic.*lmdb.*tfds"):
    sources.make_source(data)


def test_tfds_builders_round_trip(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  from sslocr_jax.data import tfds_builders as tb  # pylint: disable=g-import-not-at-top

  data_dir = str(tmp_path / "tfds")
  # synthetic_lines: what TfdsSource reads is exactly what the renderer drew.
  d = tb.build(
    tb.SyntheticLines, data_dir, tb.SyntheticLinesConfig(name="tiny", num_train=16, num_test=4)
  )
  src = sources.TfdsSource(d, "train")
  assert len(src) == 16 and len(sources.TfdsSource(d, "test")) == 4
  raw = tfds.builder_from_directory(d).as_data_source(split="train")
  rend = render.Renderer(seed=0)
  for i in (0, 7):
    img, label = rend.render(int(raw[i]["index"]))
    assert src[i]["label"] == label
    np.testing.assert_array_equal(src[i]["image"], img)
  by_name = sources.TfdsSource("synthetic_lines/tiny", "test", data_dir=data_dir)
  assert isinstance(pickle.loads(pickle.dumps(by_name))[0]["label"], str)
  # lmdb_import: the corrupt record is skipped, the others keep their labels.
  lm = str(tmp_path / "lm")
  sources.write_lmdb(lm, [(_img(1), "one"), (b"junk", "bad"), (_img(3, True), "three")])
  d2 = tb.build(tb.LmdbImport, data_dir, tb.LmdbImportConfig(name="tiny", splits={"test": [lm]}))
  recs = [r for r in sources.TfdsSource(d2, "test")]
  got = {r["label"]: r["image"] for r in recs}
  assert sorted(got) == ["one", "three"]
  assert got["three"].shape == (12, 23, 3) and (got["three"] == 30).all()
  assert (got["one"] == 10).all()
  assert tb.LmdbImport.num_skipped >= 1
  with pytest.raises(FileNotFoundError, match="dataset_info.json"):
    sources.TfdsSource(str(tmp_path), "train")


def test_grain_worker_init_ignores_shutdown_signals_and_uses_one_opencv_thread():
  import signal  # pylint: disable=g-import-not-at-top
  import cv2  # pylint: disable=g-import-not-at-top
  from sslocr_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  threads = cv2.getNumThreads()
  try:
    pipeline.worker_init(0, 2)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    assert cv2.getNumThreads() == 1
  finally:
    for s, handler in old.items():
      signal.signal(s, handler)
    cv2.setNumThreads(threads)


def test_num_workers_from_host_cores(monkeypatch):
  from sslocr_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  data = lambda n: ml_collections.ConfigDict({"num_workers": n})
  for cores, want in ((1, 0), (2, 1), (16, 15), (240, pipeline.MAX_AUTO_WORKERS)):
    monkeypatch.setattr(pipeline, "host_cores", lambda c=cores: c)
    assert pipeline.resolve_num_workers(data(-1)) == want
  assert pipeline.resolve_num_workers(data(3)) == 3 and pipeline.resolve_num_workers(data(0)) == 0
