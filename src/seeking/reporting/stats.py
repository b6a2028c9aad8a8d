"""Paired statistics over seeds: the one owner of every confidence interval the project prints.

Two arms run with the same seed share their initial weights, data order and augmentation, so the
arm-to-arm difference at one seed removes most of the seed's own noise. For seeds ``s`` present in
both arms the paired differences are ``d_s = a_s - b_s``; their mean has the Student t interval

    mean(d) ± t_{(1 + level)/2, n - 1} · sd(d) / sqrt(n)

(``sd``: the sample standard deviation, ``n - 1`` in the denominator; the t quantile from
``scipy.stats.t``). One seed has no interval: :class:`Interval` holds ``None`` for its bounds, and
:func:`interval_text` says so. The interval assumes the differences are roughly normal, which few
seeds cannot check: it is a yardstick for "is the effect larger than the seed noise", not a proof.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from scipy import stats as _scipy_stats

LEVEL = 0.95  # the confidence level every table shows


@dataclass(frozen=True)
class Interval:
    """The mean of ``n`` values and its t interval at ``level``; ``low``, ``high`` and ``std`` are
    ``None`` below two values, and ``mean`` is NaN for none."""

    n: int
    mean: float
    std: float | None
    low: float | None
    high: float | None
    level: float = LEVEL

    @property
    def half_width(self) -> float | None:
        return None if self.low is None or self.high is None else (self.high - self.low) / 2

    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly on one side of 0 (an effect larger than the seed noise)."""
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)


def _defined(values: Iterable[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(v)]


def mean_interval(values: Iterable[float | None], level: float = LEVEL) -> Interval:
    """The mean of the defined values (``None`` and NaN are left out, and not counted in ``n``) with its
    two-sided Student t interval at ``level``. Raises ``ValueError`` for a level outside (0, 1)."""
    if not 0 < level < 1:
        raise ValueError(f"a confidence level must lie in (0, 1), got {level}")
    xs = _defined(values)
    n = len(xs)
    if n == 0:
        return Interval(0, math.nan, None, None, None, level)
    mean = statistics.fmean(xs)
    if n == 1:
        return Interval(1, mean, None, None, None, level)
    std = statistics.stdev(xs)
    half = float(_scipy_stats.t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n)
    return Interval(n, mean, std, mean - half, mean + half, level)


def paired_differences(values: Mapping[int, float | None], reference: Mapping[int, float | None]) -> dict[int, float]:
    """``values[s] - reference[s]`` for every seed ``s`` in both (sorted by seed), leaving out a seed where
    either is ``None`` or NaN."""
    both = sorted(set(values) & set(reference))
    return {s: values[s] - reference[s] for s in both if len(_defined([values[s], reference[s]])) == 2}


def paired_interval(
    values: Mapping[int, float | None], reference: Mapping[int, float | None], level: float = LEVEL
) -> Interval:
    """The mean of the per-seed differences ``values - reference`` (keyed by seed) and its t interval."""
    return mean_interval(paired_differences(values, reference).values(), level)


def interval_text(interval: Interval, fmt: str = "+.2f") -> str:
    """``mean [low, high]`` for two or more values, ``mean (n=1: no interval)`` for one, ``-`` for none
    (or a NaN mean); ``fmt`` formats the numbers."""
    if interval.n == 0 or math.isnan(interval.mean):
        return "-"
    if interval.n == 1 or interval.low is None or interval.high is None:
        return f"{interval.mean:{fmt}} (n=1: no interval)"
    return f"{interval.mean:{fmt}} [{interval.low:{fmt}}, {interval.high:{fmt}}]"


def interval_fields(interval: Interval, prefix: str) -> dict[str, float | int | None]:
    """The interval as flat fields for a CSV or JSON row: ``<prefix>``, ``<prefix> ci low``,
    ``<prefix> ci high``, ``<prefix> n``."""
    return {
        prefix: interval.mean,
        f"{prefix} ci low": interval.low,
        f"{prefix} ci high": interval.high,
        f"{prefix} n": interval.n,
    }
