"""The study's statistics: mean +- std over seeds, the paired t interval, a claim's verdict.

A comparison pairs two cells seed by seed (the same fine-tuning seed: the same labeled subset
order, the same head initialisation), so its differences d_s = arm_s - baseline_s carry no
seed-to-seed variance that both arms share. The 95% interval of their mean is
mean(d) +- t(0.975, n-1) * sd(d) / sqrt(n) (Student's t, paired), with t from `T975` (no
scipy: the table of two-sided 95% quantiles, df 1-30 and beyond, from any statistics text).
"""

import math
import statistics

# Student's t, 0.975 quantile (two-sided 95%), by degrees of freedom; between rows the next
# smaller df is used (a wider, conservative interval).
T975 = {
  1: 12.706,
  2: 4.303,
  3: 3.182,
  4: 2.776,
  5: 2.571,
  6: 2.447,
  7: 2.365,
  8: 2.306,
  9: 2.262,
  10: 2.228,
  11: 2.201,
  12: 2.179,
  13: 2.160,
  14: 2.145,
  15: 2.131,
  16: 2.120,
  17: 2.110,
  18: 2.101,
  19: 2.093,
  20: 2.086,
  21: 2.080,
  22: 2.074,
  23: 2.069,
  24: 2.064,
  25: 2.060,
  26: 2.056,
  27: 2.052,
  28: 2.048,
  29: 2.045,
  30: 2.042,
  40: 2.021,
  60: 2.000,
  120: 1.980,
}
Z975 = 1.960  # df -> infinity


def t975(df: int) -> float:
  """The 0.975 quantile of Student's t with `df` >= 1 degrees of freedom (from T975)."""
  if df < 1:
    raise ValueError(f"df={df}: a t interval needs at least 2 pairs")
  return T975[max(k for k in T975 if k <= df)] if df <= 1000 else Z975


def spread(values) -> dict:
  """{"n", "mean", "std" (sample, 0 for one value), "min", "max"} of `values`."""
  values = [float(v) for v in values]
  return dict(
    n=len(values),
    mean=statistics.fmean(values),
    std=statistics.stdev(values) if len(values) > 1 else 0.0,
    min=min(values),
    max=max(values),
  )


def paired_interval(arm: dict, baseline: dict) -> dict | None:
  """The 95% paired t interval of arm - baseline over the seeds both have ({seed: value}):
  {"n", "seeds", "mean", "std", "lo", "hi"}; None with fewer than 2 common seeds."""
  seeds = sorted(set(arm) & set(baseline))
  if len(seeds) < 2:
    return None
  d = [float(arm[s]) - float(baseline[s]) for s in seeds]
  mean, sd = statistics.fmean(d), statistics.stdev(d)
  half = t975(len(d) - 1) * sd / math.sqrt(len(d))
  return dict(n=len(d), seeds=seeds, mean=mean, std=sd, lo=mean - half, hi=mean + half)


def verdict(interval: dict | None, relation: str = ">", margin: float = 0.0) -> str:
  """reproduced | refuted | inconclusive | pending (no interval yet) for the claim "arm
  `relation` baseline" from the interval of arm - baseline.

  ">"  : reproduced when the whole interval is above 0, refuted when it is below 0.
  ">=" : non-inferiority with `margin` m (percentage points): reproduced when the interval is
         above -m (the arm loses at most m), refuted when it is below -m.
  Anything else (the interval straddles the line) is inconclusive: more seeds could tell.
  """
  if interval is None:
    return "pending"
  line = -float(margin) if relation == ">=" else 0.0
  if interval["lo"] > line:
    return "reproduced"
  if interval["hi"] < line:
    return "refuted"
  return "inconclusive"


def claim_verdict(verdicts: list[str]) -> str:
  """A claim holds when every comparison it rests on does: refuted if any comparison is,
  pending if any has no interval yet, reproduced if all are, else inconclusive."""
  if "refuted" in verdicts:
    return "refuted"
  if not verdicts or "pending" in verdicts:
    return "pending"
  if all(v == "reproduced" for v in verdicts):
    return "reproduced"
  return "inconclusive"
