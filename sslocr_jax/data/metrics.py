"""Word accuracy and 1 - NED for scene-text benchmarks, always reported in percent.

Standard filtering first (both prediction and ground truth): lowercase, keep only [0-9a-z]
(`charset.filter_label_for_metric`). Then, per sample:

    correct   = filtered prediction == filtered ground truth
    1 - NED   = 1 - edit_distance(p, g) / max(len(p), len(g))   (1 when both are empty)

    counts = score(preds, gts)          # Counts(samples, correct, one_minus_ned_sum)
    counts.report()                     # {"samples", "accuracy" %, "one_minus_ned" %}, 2 decimals
    average([counts, ...])              # sample-weighted over benchmarks (= sum of the counts)
"""

import dataclasses

from sslocr_jax.data.charset import filter_label_for_metric


def edit_distance(a: str, b: str) -> int:
  """Levenshtein distance (unit costs)."""
  if len(a) < len(b):
    a, b = b, a
  prev = list(range(len(b) + 1))
  for i, ca in enumerate(a, 1):
    cur = [i]
    for j, cb in enumerate(b, 1):
      cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
    prev = cur
  return prev[-1]


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
    return Counts(self.samples + other.samples, self.correct + other.correct,
                  self.one_minus_ned_sum + other.one_minus_ned_sum)

  def report(self) -> dict:
    """{"samples": n, "accuracy": % (2 decimals), "one_minus_ned": % (2 decimals)}."""
    n = max(self.samples, 1)
    return {"samples": self.samples,
            "accuracy": round(100.0 * self.correct / n, 2),
            "one_minus_ned": round(100.0 * self.one_minus_ned_sum / n, 2)}


def score(preds, gts, filtered: bool = True) -> Counts:
  """Counts of a list of predicted and ground-truth strings (standard filtering by default)."""
  if len(preds) != len(gts):
    raise ValueError(f"{len(preds)} predictions for {len(gts)} labels")
  correct, ned = 0, 0.0
  for p, g in zip(preds, gts):
    if filtered:
      p, g = filter_label_for_metric(p), filter_label_for_metric(g)
    correct += p == g
    ned += one_minus_ned(p, g)
  return Counts(len(preds), correct, ned)


def average(counts) -> Counts:
  """Sample-weighted average over benchmarks: the sum of their counts."""
  total = Counts()
  for c in counts:
    total += c
  return total


def format_table(results: dict) -> str:
  """{name: report} (with "average" last) -> an aligned text table; a `skipped` column (records
  that could not be read) when any report has one."""
  skipped = any("skipped" in r for r in results.values())
  rows = [("benchmark", "samples", "accuracy %", "1-NED %") + (("skipped",) if skipped else ())]
  rows += [(name, str(r["samples"]), f"{r['accuracy']:.2f}", f"{r['one_minus_ned']:.2f}") +
           ((str(r.get("skipped", "")),) if skipped else ())
           for name, r in results.items()]
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                     enumerate(zip(row, widths))) for row in rows]
  lines.insert(1, "-" * len(lines[0]))
  if "average" in results:
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
  return "\n".join(lines)
