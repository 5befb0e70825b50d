"""Per-sample evaluation output: predictions.jsonl and a PNG grid of the worst failures.

    rows = Samples(eval_charset, keep_worst=32)
    rows.add(index, label, prediction, confidence, image)   # per sample, in benchmark order
    rows.counts                                             # metrics.Counts of the rows
    rows.write(folder)   -> folder/predictions.jsonl, folder/worst_failures.png (if any failed)

A jsonl row: {"index": i (0-based; LMDB record i + 1), "label", "prediction", "confidence",
"correct", "ned"} with `ned` the normalised edit distance after the mode's filtering (0 for a
perfect read; 1 - ned is the 1-NED figure). "Worst" = the largest ned, then the most confident.
"""

import heapq
import io
import json

from etils import epath
import numpy as np

from sslocr_jax.data import metrics


class Samples:
  """Scored samples of one benchmark, with the worst failures' images kept for the grid."""

  def __init__(self, eval_charset: str = "lower36", keep_worst: int = 32):
    self.eval_charset, self.keep_worst = eval_charset, keep_worst
    self.rows = []
    self.counts = metrics.Counts()
    self._worst = []  # min-heap of (ned, confidence, -index, image, label, prediction)

  def add(self, index: int, label: str, prediction: str, confidence: float, image=None):
    ok, ned = metrics.sample_score(prediction, label, self.eval_charset)
    self.counts += metrics.Counts(1, int(ok), 1.0 - ned)
    self.rows.append(
      {
        "index": int(index),
        "label": label,
        "prediction": prediction,
        "confidence": round(float(confidence), 4),
        "correct": bool(ok),
        "ned": round(ned, 4),
      }
    )
    if not ok and image is not None and self.keep_worst:
      item = (ned, float(confidence), -int(index), np.asarray(image), label, prediction)
      if len(self._worst) < self.keep_worst:
        heapq.heappush(self._worst, item)
      elif item[:3] > self._worst[0][:3]:
        heapq.heapreplace(self._worst, item)

  def worst(self) -> list[tuple]:
    """[(image, label, prediction, confidence, ned)], worst first."""
    items = sorted(self._worst, key=lambda t: t[:3], reverse=True)
    return [(im, label, pred, conf, ned) for ned, conf, _, im, label, pred in items]

  def write(self, folder) -> list[epath.Path]:
    """Writes predictions.jsonl (and worst_failures.png when some sample failed)."""
    folder = epath.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "predictions.jsonl"]
    written[0].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.rows))
    worst = self.worst()
    if worst:
      written.append(folder / "worst_failures.png")
      written[1].write_bytes(grid_png(worst))
    return written


def grid_png(items, columns: int = 4) -> bytes:
  """PNG of [(image uint8 [H, W, 3], label, prediction, confidence, ned)]: one tile each,
  titled with the label, the prediction and its confidence."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  rows = -(-len(items) // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 1.35 * rows), squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  for ax, (image, label, pred, conf, ned) in zip(axes.ravel(), items):
    ax.imshow(image)
    ax.set_title(
      f"{label!r} -> {pred!r}\nconf {conf:.2f}, ned {ned:.2f}", fontsize=7, parse_math=False
    )  # labels may hold "$"
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100)
  plt.close(fig)
  return buf.getvalue()
