"""Statistics over seeds: means with Student-t confidence intervals, ranges, seed pairing.

Every number in a comparison table is a mean over ``n`` seeds (or seed pairs) with a
95% confidence interval ``mean +- t_{0.975, n-1} * sd / sqrt(n)`` (``sd`` with the
``n - 1`` denominator). With one seed there is no interval: it is reported as
"n/a (1 seed)". The noise floor (baseline seeds against each other) uses ordered pairs
of the same runs, which are not independent, so it is reported as a range (min, max),
never as a t interval.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values with a ``CONFIDENCE`` interval (``lo``/``hi`` None when n < 2)."""

    mean: float
    lo: float | None
    hi: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Interval:
        x = np.asarray(values, dtype=np.float64)
        if len(x) == 0:
            raise ValueError("an interval needs at least one value")
        mean = float(x.mean())
        if len(x) < 2:
            return cls(mean, None, None, len(x))
        half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
        return cls(mean, mean - half, mean + half, len(x))

    def excludes(self, value: float) -> bool:
        """True when the interval lies entirely on one side of ``value`` (False without an interval)."""
        return self.lo is not None and (self.lo > value or self.hi < value)

    def text(self, digits: int = 3) -> str:
        if self.lo is None:
            return f"{self.mean:.{digits}f} [n/a ({self.n} seed)]"
        return f"{self.mean:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"


@dataclass(frozen=True)
class Range:
    """Mean, min and max of values that are not independent (noise-floor pairs)."""

    mean: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Range | None:
        x = np.asarray(values, dtype=np.float64)
        return None if len(x) == 0 else cls(float(x.mean()), float(x.min()), float(x.max()), len(x))

    def text(self, digits: int = 3) -> str:
        return f"{self.mean:.{digits}f} (range {self.lo:.{digits}f} .. {self.hi:.{digits}f})"


def pair_by_seed(base_seeds: Sequence[int | None],
                 cand_seeds: Sequence[int | None]) -> tuple[list[tuple[int, int]], str]:
    """Index pairs (baseline, candidate): by seed number where both sides carry the same seeds, else by
    position in seed order (the shorter group sets the count). Returns the pairs and how they were made."""
    common = sorted({s for s in base_seeds if s is not None} & {s for s in cand_seeds if s is not None})
    if common and len(common) == min(len(base_seeds), len(cand_seeds)):
        return [(list(base_seeds).index(s), list(cand_seeds).index(s)) for s in common], "by seed"
    n = min(len(base_seeds), len(cand_seeds))
    return [(i, i) for i in range(n)], "by order" if n > 1 else "single"
