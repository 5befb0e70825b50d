"""Workdir files go through etils.epath: a `gs://` workdir works on a fake (in-memory) bucket.

The fake replaces epath's fsspec backend (the one `gs://` paths use without tensorflow) with an
in-memory file system that, like an object store, has no append mode. Nothing may appear on
the local disk (the old os.path code wrote `./gs:/bucket/...`).
"""

from absl import logging
from etils import epath
from etils.epath import backend as epath_backend
from fsspec.implementations.memory import MemoryFileSystem
import ml_collections
import numpy as np
import pytest

from sslocr_jax.train import resolve
from sslocr_jax.train import writers


class _FakeBucket(MemoryFileSystem):
  """`gs://bucket/x` -> `/bucket/x` in memory; opening for append fails (as on GCS)."""

  protocol = ("fakegs",)
  store, pseudo_dirs = {}, [""]

  @classmethod
  def _strip_protocol(cls, path):
    path = str(path)
    return "/" + (path[len("gs://") :] if path.startswith("gs://") else path).strip("/")

  def _open(self, path, mode="rb", **kwargs):
    if "a" in mode:
      raise NotImplementedError("object stores cannot append")
    return super()._open(path, mode, **kwargs)


@pytest.fixture
def bucket(monkeypatch, tmp_path):
  fs = _FakeBucket(skip_instance_cache=True)
  fs.store.clear()
  monkeypatch.setattr(type(epath_backend.fsspec_backend), "fs", lambda self, path: fs)
  from etils.epath import gpath  # pylint: disable=g-import-not-at-top

  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
  monkeypatch.chdir(tmp_path)  # a local `gs:` folder would land here
  yield fs
  assert not list(tmp_path.iterdir()), "wrote to the local disk"


def test_writers_on_a_gs_workdir(bucket, monkeypatch):
  warnings = []
  monkeypatch.setattr(logging, "warning", lambda msg, *a: warnings.append(msg % a))
  workdir = "gs://bucket/run"
  writers.write_config(ml_collections.ConfigDict({"method": "dig", "seed": 0}), workdir)
  w = writers.MetricWriter(workdir)
  assert len(warnings) == 1 and "TensorBoard" in warnings[0]  # tensorboardX can't write there
  for step in (2, 4, 6):
    w.write_scalars(step, {"loss": np.float32(1.0 / step)})
  paths = w.write_images(6, {"grid": np.zeros((4, 6, 3), np.uint8)})
  w.close()
  assert [str(p) for p in paths] == ["gs://bucket/run/samples/grid_0000006.png"]
  assert bucket.cat("/bucket/run/samples/grid_0000006.png")[:4] == b"\x89PNG"
  assert [r["step"] for r in writers.read_metrics(workdir)] == [2, 4, 6]
  writers.truncate_metrics(workdir, 4)
  assert writers.read_metrics(epath.Path(workdir)) == [
    {"step": 2, "loss": 0.5},
    {"step": 4, "loss": 0.25},
  ]
  assert resolve.load_run_config(workdir + "/checkpoints").method == "dig"  # found one level up
  assert str(resolve.checkpoint_dir(workdir)) == workdir  # no best/ or checkpoints/ there
  assert bucket.ls("/bucket/run", detail=False) == [
    "/bucket/run/config.json",
    "/bucket/run/metrics.jsonl",
    "/bucket/run/samples",
  ]


def test_local_workdir_appends_and_keeps_tensorboard(tmp_path):
  w = writers.MetricWriter(epath.Path(tmp_path))
  w.write_scalars(1, {"loss": 1.0})
  w.write_scalars(2, {"loss": 2.0})
  w.close()
  assert [r["step"] for r in writers.read_metrics(str(tmp_path))] == [1, 2]
  assert list((tmp_path / "tensorboard").iterdir())
  # Tolerant reader (the study polls runs that may be killed mid-line or not started yet).
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 3, "lo')
  assert [r["step"] for r in writers.read_metrics(str(tmp_path))] == [1, 2]
  assert writers.read_metrics(str(tmp_path / "not_started")) == []
