"""grain random-access sources of text-line records.

Every source has `__len__`, `__getitem__(i)` (deterministic by index) and yields

    {"image": np.uint8 [H, W, 3] (RGB, any size), "label": str}

or None for a corrupt record, after a `logging.warning` naming the file and the
record index; `source.num_bad` counts them (per process), and `note_bad` keeps the distinct
bad records per (folder, reason) for the summaries of the train loop and the evaluation
(`bad_records`). LMDB records also carry `source` (the folder) and `record` (its 1-based
number), so later stages (a label the charset drops) can name the record. Sources are
picklable: grain worker processes get a copy and reopen files lazily after the fork (their
bad records are counted in the worker processes, not in the summaries).

    make_source(config.data)          # dispatch on config.data.source
    SyntheticSource(n, seed)          # built-in renderer (render.py)
    LmdbSource([folder, ...])         # clovaai LMDBs, concatenated
    TfdsSource(name_or_dir, split)    # TFDS array_record, read without TensorFlow
"""

import bisect
import logging
import os
import threading

import cv2
import numpy as np

from sslocr_jax import errors
from sslocr_jax.data import images
from sslocr_jax.data import render

SOURCES = ("synthetic", "lmdb", "tfds")

_BAD = {}  # (folder, reason) -> set of bad record numbers (this process)
_BAD_LOCK = threading.Lock()


def note_bad(folder, record, reason: str) -> bool:
  """Records a skipped record; True the first time this (folder, record, reason) is seen."""
  with _BAD_LOCK:
    seen = _BAD.setdefault((str(folder), reason), set())
    new = record not in seen
    seen.add(record)
  return new


def bad_records(folder: str | None = None) -> dict:
  """{(folder, reason): number of distinct records skipped} (this process), for one folder or
  all."""
  with _BAD_LOCK:
    return {k: len(v) for k, v in sorted(_BAD.items()) if folder is None or k[0] == folder}


def bad_summary(folder: str | None = None) -> list[str]:
  """One line per folder: 'skipped records in FOLDER: 2 undecodable image, 1 empty image'."""
  per_folder = {}
  for (f, reason), n in bad_records(folder).items():
    per_folder.setdefault(f, []).append(f"{n} {reason}")
  return [f"skipped records in {f}: {', '.join(parts)}" for f, parts in per_folder.items()]


class _Counted:
  """`num_bad` bookkeeping shared by the sources (thread-safe, per process)."""

  num_bad = 0

  def _bad(self, folder, record, reason, msg, *args):
    """Counts a corrupt record; warns the first time it is met (not again every epoch)."""
    if note_bad(folder, record, reason):
      logging.warning(msg, *args)
    with self._lock:
      self.num_bad += 1
    return None

  @property
  def _lock(self):
    lock = self.__dict__.get("_lock_obj")
    if lock is None:
      lock = self.__dict__.setdefault("_lock_obj", threading.Lock())
    return lock

  def __getstate__(self):
    state = self.__dict__.copy()
    state.pop("_lock_obj", None)
    return state


class SyntheticSource(_Counted):
  """`num_samples` synthetic lines of `render.Renderer(seed=seed, **kwargs)`."""

  def __init__(self, num_samples, seed=0, **renderer_kwargs):
    self.num_samples = int(num_samples)
    self.renderer = render.Renderer(seed=seed, **renderer_kwargs)

  def __len__(self):
    return self.num_samples

  def __getitem__(self, index):
    if not 0 <= index < self.num_samples:
      raise IndexError(f"index {index} out of range [0, {self.num_samples})")
    image, label = self.renderer.render(index)
    return {"image": image, "label": label}


# --- LMDB (clovaai/deep-text-recognition-benchmark) ---------------------------


def _check_lmdb_dir(path):
  if not os.path.isdir(path):
    raise errors.MissingPath(f"LMDB folder {path!r} does not exist")
  if not os.path.isfile(os.path.join(path, "data.mdb")):
    raise errors.MissingPath(f"LMDB folder {path!r} has no data.mdb (not an LMDB)")


def _open_lmdb(path):
  import lmdb  # pylint: disable=g-import-not-at-top

  return lmdb.open(path, readonly=True, lock=False, readahead=False, meminit=False, max_readers=256)


# LMDB forbids opening one environment twice in a process, and several sources
# (or pickled copies of one) may read the same folder: share one per process.
_ENVS = {}  # (pid, realpath) -> lmdb.Environment
_ENVS_LOCK = threading.Lock()


def lmdb_env(path):
  """The process-wide read-only environment of `path` (opened on first use)."""
  key = (os.getpid(), os.path.realpath(path))
  env = _ENVS.get(key)
  if env is None:
    with _ENVS_LOCK:
      env = _ENVS.get(key)
      if env is None:
        env = _ENVS[key] = _open_lmdb(path)
  return env


def _forget_env(path):
  env = _ENVS.pop((os.getpid(), os.path.realpath(path)), None)
  if env is not None:
    env.close()


def find_lmdbs(root):
  """Sorted folders under `root` (itself included) that hold a data.mdb."""
  if not os.path.isdir(root):
    raise errors.MissingPath(f"folder {root!r} does not exist")
  return sorted(d for d, _, files in os.walk(root) if "data.mdb" in files)


def write_lmdb(path, samples, map_size=1 << 30):
  """Writes an LMDB in the clovaai format; returns the number of samples.

  Args:
    path: output folder (created).
    samples: iterable of (image, label): image is uint8 [H, W] / [H, W, 3] RGB
      (PNG-encoded here) or already-encoded bytes (written as is); label str.
    map_size: LMDB map size in bytes (an upper bound, not allocated).
  """
  import lmdb  # pylint: disable=g-import-not-at-top

  os.makedirs(path, exist_ok=True)
  _forget_env(path)  # a read-only handle of this process would block the writer
  env = lmdb.open(path, map_size=map_size)
  n = 0
  with env.begin(write=True) as txn:
    for n, (image, label) in enumerate(samples, 1):
      if not isinstance(image, (bytes, bytearray, memoryview)):
        image = np.asarray(image)
        if image.ndim == 3:
          image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode(".png", image)
        if not ok:
          raise ValueError(f"cannot PNG-encode sample {n} of shape {image.shape}")
        image = buf.tobytes()
      txn.put(b"image-%09d" % n, bytes(image))
      txn.put(b"label-%09d" % n, label.encode("utf-8"))
    txn.put(b"num-samples", str(n).encode())
  env.close()
  return n


class LmdbSource(_Counted):
  """Concatenation of clovaai LMDB folders; index i -> record of one LMDB.

  Keys: b"num-samples" (decimal), b"image-%09d" (encoded image), b"label-%09d"
  (UTF-8), record numbers from 1. Images are decoded by `images.decode` to RGB (grayscale,
  16-bit and palette converted, transparency composited). Environments are opened lazily,
  once per process (`lmdb_env`), so pickled copies in grain workers reopen them after the fork.
  """

  def __init__(self, paths):
    if isinstance(paths, (str, os.PathLike)):
      paths = [paths]
    self.paths = [os.fspath(p) for p in paths]
    if not self.paths:
      raise errors.UserError("LmdbSource needs at least one LMDB folder")
    self.sizes = []
    for p in self.paths:
      _check_lmdb_dir(p)
      with lmdb_env(p).begin() as txn:
        n = txn.get(b"num-samples")
      if n is None:
        raise errors.UserError(f"LMDB {p!r} has no b'num-samples' key (not a clovaai LMDB)")
      if int(n) <= 0:
        raise errors.UserError(f"LMDB {p!r} is empty (num-samples={int(n)})")
      self.sizes.append(int(n))
    self.offsets = np.cumsum([0] + self.sizes).tolist()

  def __len__(self):
    return self.offsets[-1]

  def locate(self, index):
    """index -> (LMDB number, 1-based record number)."""
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range [0, {len(self)})")
    k = bisect.bisect_right(self.offsets, index) - 1
    return k, index - self.offsets[k] + 1

  def __getitem__(self, index):
    k, rec = self.locate(index)
    path = self.paths[k]
    with lmdb_env(path).begin() as txn:
      buf = txn.get(b"image-%09d" % rec)
      raw_label = txn.get(b"label-%09d" % rec)
    if buf is None or raw_label is None:
      missing = "image" if buf is None else "label"
      return self._bad(
        path,
        rec,
        f"no {missing} key",
        "LMDB %s: record %d (index %d) has no %s key",
        path,
        rec,
        index,
        missing,
      )
    try:
      label = raw_label.decode("utf-8")
    except UnicodeDecodeError:
      return self._bad(
        path,
        rec,
        "label not UTF-8",
        "LMDB %s: record %d (index %d): label is not UTF-8",
        path,
        rec,
        index,
      )
    try:
      image = images.decode(buf)
    except images.DecodeError as e:
      reason = str(e).split(" (")[0]  # "empty image" / "undecodable image"
      return self._bad(path, rec, reason, "LMDB %s: record %d (index %d): %s", path, rec, index, e)
    return {"image": image, "label": label, "source": path, "record": rec}


# --- TFDS (array_record, no TensorFlow) ----------------------------------------


class TfdsSource(_Counted):
  """A TFDS split read through `tfds.data_source` (array_record; no TensorFlow).

  Args:
    name_or_builder_dir: a registered name ("synthetic_lines/default:1.0.0") looked
      up in `data_dir`, or a folder written by a builder (with dataset_info.json).
    split: e.g. "train", "test[:10%]".
    data_dir: TFDS data dir for names.
    image_key / label_key: feature names of the image and the text label.
  """

  def __init__(
    self, name_or_builder_dir, split="train", data_dir=None, image_key="image", label_key="label"
  ):
    self.name = os.fspath(name_or_builder_dir)
    self.split = split
    self.data_dir = data_dir or None
    self.image_key, self.label_key = image_key, label_key
    self._ds = None
    self._pid = None
    self._len = len(self._source())

  def _source(self):
    if self._ds is None or self._pid != os.getpid():
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

      if os.path.isfile(os.path.join(self.name, "dataset_info.json")):
        ds = tfds.builder_from_directory(self.name).as_data_source(split=self.split)
      elif os.path.isdir(self.name):
        raise errors.MissingPath(
          f"TFDS folder {self.name!r} has no dataset_info.json (expected a "
          "builder folder like data_dir/name/config/version)"
        )
      else:
        ds = tfds.data_source(self.name, split=self.split, data_dir=self.data_dir, download=False)
      self._ds, self._pid = ds, os.getpid()
    return self._ds

  def __getstate__(self):
    state = super().__getstate__()
    state["_ds"], state["_pid"] = None, None
    return state

  def __len__(self):
    return self._len

  def __getitem__(self, index):
    if not 0 <= index < self._len:
      raise IndexError(f"index {index} out of range [0, {self._len})")
    try:
      ex = self._source()[index]
      image = images.to_rgb(ex[self.image_key])
      label = ex[self.label_key]
      if isinstance(label, (bytes, np.bytes_)):
        label = label.decode("utf-8")
    except Exception as e:  # pylint: disable=broad-except
      return self._bad(
        f"{self.name}[{self.split}]",
        index,
        "unreadable record",
        "TFDS %s[%s]: record %d unreadable: %r",
        self.name,
        self.split,
        index,
        e,
      )
    return {"image": np.ascontiguousarray(image, np.uint8), "label": str(label)}


def lmdb_paths(value) -> list[str]:
  """`data.lmdb_paths` as a list: a list / tuple of folders, or "a,b" (a command-line string)."""
  if isinstance(value, (str, os.PathLike)):
    value = os.fspath(value).split(",")
  return [os.fspath(p).strip() for p in (value or ()) if os.fspath(p).strip()]


def make_source(data):
  """Source of `config.data` (ConfigDict or dict), by `data.source`:

  synthetic: num_samples, seed, font_split, word_prob, font_dirs (optional)
  lmdb:      lmdb_paths (list of folders, or one string of comma-separated folders)
  tfds:      tfds_name (name or builder folder), tfds_data_dir, split
  """
  kind = data.get("source", "synthetic")
  if kind == "synthetic":
    return SyntheticSource(
      int(data["num_samples"]),
      seed=int(data.get("seed", 0)),
      font_split=data.get("font_split", "train"),
      word_prob=float(data.get("word_prob", 0.6)),
      font_dirs=tuple(data.get("font_dirs", None) or ()),
    )
  if kind == "lmdb":
    paths = lmdb_paths(data.get("lmdb_paths", None))
    if not paths:
      raise errors.UserError(
        "config.data.source='lmdb' needs config.data.lmdb_paths "
        "(--config.data.lmdb_paths=/data/a,/data/b)"
      )
    return LmdbSource(paths)
  if kind == "tfds":
    if not data.get("tfds_name", ""):
      raise errors.UserError("config.data.source='tfds' needs config.data.tfds_name")
    return TfdsSource(
      data["tfds_name"],
      split=data.get("split", "train"),
      data_dir=data.get("tfds_data_dir", None) or None,
    )
  raise errors.UserError(f"unknown config.data.source {kind!r}; valid: {list(SOURCES)}")
