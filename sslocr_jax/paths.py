"""Workdir paths and files on local disks or object stores (base utility: no package imports).

Every file operation of the package goes through `etils.epath` (as orbax does), so a workdir
may be a local folder or a bucket URI (`gs://bucket/run`, with gcsfs or tensorflow installed
for the `gs://` file system).
"""

import json
import os

from etils import epath


def workdir_path(path) -> epath.Path:
  """`epath.Path` of a workdir or a file in it: a URI (gs://...) as is, a local path absolute."""
  p = epath.Path(path)
  return p if is_remote(p) else p.resolve()


def is_remote(path) -> bool:
  """True for a URI (gs://, s3://, ...), False for a local path."""
  return "://" in os.fspath(path)


def write_text(path, text: str, append: bool = False) -> None:
  """Writes (or appends) `text` to `path`; on an object store (no appends) rewrites the file."""
  path = epath.Path(path)
  if append and is_remote(path):
    text, append = (path.read_text() if path.exists() else "") + text, False
  with path.open("a" if append else "w") as f:
    f.write(text)


def read_metrics(workdir) -> list[dict]:
  """The rows of WORKDIR/metrics.jsonl (written by train/writers.py), in file order.

  Tolerant, for readers of a run that may be in progress or was killed: no file yet -> [];
  a line cut by an interruption (not valid JSON) is skipped.
  """
  path = workdir_path(workdir) / "metrics.jsonl"
  try:
    text = path.read_text()
  except FileNotFoundError:
    return []
  rows = []
  for line in text.splitlines():
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      pass  # blank, or cut by an interruption
  return rows
