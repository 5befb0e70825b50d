"""Word accuracy and 1 - NED for scene-text benchmarks, always reported in percent.

Filtering first (both prediction and ground truth), by the scoring mode `eval_charset`
(`charset.filter_label_for_metric`): `lower36` (the standard protocol: lowercase, keep only
[0-9a-z]; the default), `cased62` ([0-9a-zA-Z], case kept), `printable94` (case and
punctuation kept). Then, per sample:

    correct   = filtered prediction == filtered ground truth
    1 - NED   = 1 - edit_distance(p, g) / max(len(p), len(g))   (1 when both are empty)

    counts = score(preds, gts, eval_charset="lower36")  # Counts(samples, correct, 1-NED sum)
    sample_score(pred, gt, eval_charset)  # (correct, normalised edit distance) of one sample
    counts.report()                     # {"samples", "accuracy" %, "one_minus_ned" %}, 2 decimals
    average([counts, ...])              # sample-weighted over benchmarks (= sum of the counts)
"""

import dataclasses

from rapidfuzz.distance import Levenshtein

from sslocr_jax.data.charset import EVAL_CHARSETS
from sslocr_jax.data.charset import filter_label_for_metric


def edit_distance(a: str, b: str) -> int:
  """Levenshtein distance (unit costs; rapidfuzz)."""
  return Levenshtein.distance(a, b)


def one_minus_ned(pred: str, gt: str) -> float:
  """1 - normalized edit distance in [0, 1] (ICDAR 2019: normalized by the longer string)."""
  n = max(len(pred), len(gt))
  return 1.0 if n == 0 else 1.0 - edit_distance(pred, gt) / n


@dataclasses.dataclass(frozen=True)
class Counts:
  """Sums over samples; add them to merge batches or benchmarks."""

  samples: int = 0
  correct: int = 0
  one_minus_ned_sum: float = 0.0

  def __add__(self, other: "Counts") -> "Counts":
    return Counts(
      self.samples + other.samples,
      self.correct + other.correct,
      self.one_minus_ned_sum + other.one_minus_ned_sum,
    )

  def report(self) -> dict:
    """{"samples": n, "accuracy": % (2 decimals), "one_minus_ned": % (2 decimals)}."""
    n = max(self.samples, 1)
    return {
      "samples": self.samples,
      "accuracy": round(100.0 * self.correct / n, 2),
      "one_minus_ned": round(100.0 * self.one_minus_ned_sum / n, 2),
    }


def sample_score(pred: str, gt: str, eval_charset: str | None = "lower36") -> tuple[bool, float]:
  """(correct, normalised edit distance in [0, 1]) of one sample after the mode's filtering
  (eval_charset=None: compared as is)."""
  if eval_charset is not None:
    pred, gt = (
      filter_label_for_metric(pred, eval_charset),
      filter_label_for_metric(gt, eval_charset),
    )
  return pred == gt, 1.0 - one_minus_ned(pred, gt)


def score(preds, gts, filtered: bool = True, eval_charset: str = "lower36") -> Counts:
  """Counts of a list of predicted and ground-truth strings (filtered by the scoring mode
  `eval_charset` unless filtered=False)."""
  if len(preds) != len(gts):
    raise ValueError(f"{len(preds)} predictions for {len(gts)} labels")
  correct, ned = 0, 0.0
  for p, g in zip(preds, gts):
    ok, d = sample_score(p, g, eval_charset if filtered else None)
    correct += ok
    ned += 1.0 - d
  return Counts(len(preds), correct, ned)


def average(counts) -> Counts:
  """Sample-weighted average over benchmarks: the sum of their counts."""
  total = Counts()
  for c in counts:
    total += c
  return total


def format_table(results: dict) -> str:
  """{name: report} (with "average" last; non-dict entries such as "eval_charset" are not
  rows) -> an aligned text table, headed by the scoring mode when results name one; a
  `skipped` column (records that could not be read) when any report has one."""
  reports = {name: r for name, r in results.items() if isinstance(r, dict)}
  skipped = any("skipped" in r for r in reports.values())
  rows = [("benchmark", "samples", "accuracy %", "1-NED %") + (("skipped",) if skipped else ())]
  rows += [
    (name, str(r["samples"]), f"{r['accuracy']:.2f}", f"{r['one_minus_ned']:.2f}")
    + ((str(r.get("skipped", "")),) if skipped else ())
    for name, r in reports.items()
  ]
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  lines = [
    "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
    for row in rows
  ]
  lines.insert(1, "-" * len(lines[0]))
  if "average" in results:
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
  mode = results.get("eval_charset")
  if mode:
    lines.insert(0, f"eval_charset={mode} ({EVAL_CHARSETS.get(mode, '?')})")
  return "\n".join(lines)
