"""Metric and image writers for the workdir: metrics.jsonl, TensorBoard events, PNG grids.

Only process 0 writes; on other processes every call is a no-op.
"""

import json
import os

import jax
import numpy as np
from PIL import Image


class MetricWriter:
  """Appends one JSON object per logged step to `metrics.jsonl` and mirrors it to TensorBoard."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.active = jax.process_index() == 0
    self._tb = None
    if self.active:
      os.makedirs(workdir, exist_ok=True)
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write_scalars(self, step: int, scalars: dict) -> None:
    if not self.active:
      return
    row = {"step": int(step), **{k: _py(v) for k, v in scalars.items()}}
    with open(os.path.join(self.workdir, "metrics.jsonl"), "a") as f:
      f.write(json.dumps(row) + "\n")
    for k, v in row.items():
      if k != "step" and isinstance(v, (int, float)):
        self._tb.add_scalar(k, v, step)
    self._tb.flush()

  def write_images(self, step: int, images: dict) -> list[str]:
    """Writes each `uint8 [H, W, 3]` grid as `samples/<name>_<step>.png`; returns the paths."""
    if not self.active:
      return []
    folder = os.path.join(self.workdir, "samples")
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name, img in images.items():
      img = np.asarray(img)
      path = os.path.join(folder, f"{name}_{int(step):07d}.png")
      Image.fromarray(img).save(path)
      self._tb.add_image(name, img, step, dataformats="HWC")
      paths.append(path)
    self._tb.flush()
    return paths

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def truncate_metrics(workdir: str, step: int) -> None:
  """Drops rows after `step` from metrics.jsonl (a resumed run rewrites them identically)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if jax.process_index() or not os.path.exists(path):
    return
  with open(path) as f:
    rows = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
  with open(path, "w") as f:
    f.writelines(rows)


def read_metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def _py(v):
  v = np.asarray(v)
  return v.item() if v.size == 1 else v.tolist()
