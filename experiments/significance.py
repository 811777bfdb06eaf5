"""The statistics every results table applies, in one place: the difference of two rows' means
(independent seeds, unequal variances) by Welch's t.

RULE is printed under each table that shows differences. A difference is called one ("beyond")
only when Welch's two-sided test rejects equal means at 5 %, i.e. when its 95 % interval excludes
0; with 3 seeds a row this needs far more than two standard errors (the t quantile at 2-4 degrees
of freedom is 2.8-4.3), which is why a claim rests on 5 seeds.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Sequence

from scipy import stats

ALPHA = 0.05
RULE = ("Differences: mean of the row minus mean of the reference, with the 95 % interval and the "
        "two-sided p-value of Welch's t-test (seeds independent, variances unequal); 'beyond' only "
        "where p < 0.05, i.e. the interval excludes 0. Fewer than 2 seeds on either side: no test.")


@dataclasses.dataclass(frozen=True)
class Difference:
  diff: float   # mean a - mean b
  se: float     # sqrt(var a / n_a + var b / n_b)
  df: float     # Welch-Satterthwaite degrees of freedom
  half: float   # half-width of the 95 % interval
  p: float      # two-sided p-value of equal means

  @property
  def beyond(self) -> bool:
    return self.p < ALPHA

  @property
  def low(self) -> float:
    return self.diff - self.half

  @property
  def high(self) -> float:
    return self.diff + self.half


def _moments(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
  if len(a) < 2 or len(b) < 2:
    raise ValueError(f"Welch's test needs at least 2 values on each side (got {len(a)} and {len(b)})")
  va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
  df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if va + vb > 0 else float("inf")
  return statistics.mean(a) - statistics.mean(b), (va + vb) ** 0.5, df


def welch(a: Sequence[float], b: Sequence[float]) -> Difference:
  """mean(a) - mean(b) with its Welch standard error, degrees of freedom, 95 % interval and p."""
  diff, se, df = _moments(a, b)
  if se == 0:  # identical values within each side: no spread to test against
    return Difference(diff, 0.0, df, 0.0, 1.0 if diff == 0 else 0.0)
  return Difference(diff, se, df, float(stats.t.ppf(1 - ALPHA / 2, df) * se),
                    float(2 * stats.t.sf(abs(diff) / se, df)))


def tost(a: Sequence[float], b: Sequence[float], margin: float) -> float:
  """p-value of Welch's two one-sided tests that |mean a - mean b| < margin (equivalence)."""
  diff, se, df = _moments(a, b)
  if se == 0:
    return 0.0 if abs(diff) < margin else 1.0
  return float(max(stats.t.sf((diff + margin) / se, df), stats.t.cdf((diff - margin) / se, df)))


def equivalence_margin(a: Sequence[float], b: Sequence[float]) -> float:
  """The smallest margin m at which Welch's TOST (5 % each side) shows |mean a - mean b| < m: the
  larger end of the difference's 90 % interval."""
  diff, se, df = _moments(a, b)
  return float(abs(diff) + stats.t.ppf(1 - ALPHA, df) * se)
