"""Metric and image writers for the workdir: metrics.jsonl, TensorBoard events, PNG grids.

Only process 0 writes; on other processes every call is a no-op. Paths and file writes go
through sslocr_jax/paths.py, so the workdir may be a local folder or a bucket URI.
"""

import io
import json
import os

from absl import logging
from etils import epath
import jax
import numpy as np
from PIL import Image

from sslocr_jax import paths


class MetricWriter:
  """Appends one JSON object per logged step to `metrics.jsonl` and mirrors it to TensorBoard.

  TensorBoard events are written for a local workdir, and for a `gs://` / `s3://` one when
  tensorboardX can write there (google-cloud-storage / boto3 installed); otherwise they are
  skipped with one warning (metrics.jsonl and the PNGs are always written).
  """

  def __init__(self, workdir):
    self.workdir = paths.workdir_path(workdir)
    self.active = jax.process_index() == 0
    self._tb = None
    if self.active:
      self.workdir.mkdir(parents=True, exist_ok=True)
      if _tensorboard_can_write(self.workdir):
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

        self._tb = SummaryWriter(os.fspath(self.workdir / "tensorboard"))
      else:
        logging.warning(
          "No TensorBoard events for workdir %s: tensorboardX cannot write "
          "there (install google-cloud-storage for gs://); metrics.jsonl and "
          "PNG grids are written as usual.",
          self.workdir,
        )

  def write_scalars(self, step: int, scalars: dict) -> None:
    if not self.active:
      return
    row = {"step": int(step), **{k: _py(v) for k, v in scalars.items()}}
    paths.write_text(self.workdir / "metrics.jsonl", json.dumps(row) + "\n", append=True)
    if self._tb is not None:
      for k, v in row.items():
        if k != "step" and isinstance(v, (int, float)):
          self._tb.add_scalar(k, v, step)
      self._tb.flush()

  def write_images(self, step: int, images: dict) -> list[epath.Path]:
    """Writes each `uint8 [H, W, 3]` grid as `samples/<name>_<step>.png`; returns the paths."""
    if not self.active:
      return []
    folder = self.workdir / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, img in images.items():
      img = np.asarray(img)
      path = folder / f"{name}_{int(step):07d}.png"
      buf = io.BytesIO()
      Image.fromarray(img).save(buf, format="PNG")
      path.write_bytes(buf.getvalue())
      if self._tb is not None:
        self._tb.add_image(name, img, step, dataformats="HWC")
      written.append(path)
    if self._tb is not None:
      self._tb.flush()
    return written

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def _tensorboard_can_write(workdir: epath.Path) -> bool:
  if not paths.is_remote(workdir):
    return True
  from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top

  scheme = os.fspath(workdir).split("://", 1)[0]
  enabled = {"gs": record_writer.GCS_ENABLED, "s3": record_writer.S3_ENABLED}
  return bool(enabled.get(scheme, False))


def write_config(config, workdir) -> None:
  """WORKDIR/config.json (the resolved config), on process 0."""
  if jax.process_index() == 0:
    paths.write_text(
      paths.workdir_path(workdir) / "config.json",
      config.to_json_best_effort(indent=2, sort_keys=True),
    )


def truncate_metrics(workdir, step: int) -> None:
  """Drops rows after `step` from metrics.jsonl (a resumed run rewrites them identically)."""
  path = paths.workdir_path(workdir) / "metrics.jsonl"
  if jax.process_index() or not path.exists():
    return
  rows = [
    line + "\n"
    for line in path.read_text().splitlines()
    if line.strip() and json.loads(line)["step"] <= step
  ]
  paths.write_text(path, "".join(rows))


read_metrics = paths.read_metrics  # the reader of what this module writes


def _py(v):
  v = np.asarray(v)
  return v.item() if v.size == 1 else v.tolist()
