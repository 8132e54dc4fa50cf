"""Statistics over seeds: means with Student-t confidence intervals, ranges, seed pairing.

Every number in a comparison table is a mean over ``n`` seeds (or seed pairs) with a
95% confidence interval ``mean +- t_{0.975, n-1} * sd / sqrt(n)`` (``sd`` with the
``n - 1`` denominator). With one seed there is no interval: it is reported as
"n/a (1 seed)". The noise floor (baseline seeds against each other) uses ordered pairs
of the same runs, which are not independent, so it is reported as a range (min, max),
never as a t interval.

Sampling error (generation metrics that log a sampling standard error per run, ``runs.Run.final_se``): a run's
final value is itself an estimate from a finite sample set, with SE ``se_i``. The sampling SE of a mean of ``n``
independent runs is ``sqrt(sum se_i^2) / n`` (``mean_sampling_se``). The seed-to-seed ``sd`` already holds this
noise, but two or three seeds estimate it badly, so the sampling SE is a floor: the mean's standard error is
``max(sd / sqrt(n), sampling se)`` and its interval half-width ``max(t_{0.975, n-1} * sd / sqrt(n),
1.96 * sampling se)`` -- Student-t for the seed part as above, the normal quantile for the sampling part, whose
SE comes from many samples, not from n seeds. A ratio of paired finals ``c/b`` gets its sampling SE by the delta
method (``ratio_sampling_se``). ``SamplesNeeded`` sizes the sample count at which sampling error alone resolves a
difference between two group means (two-sided 5%, 80% power).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
Z_SAMPLING = 1.96  # two-sided 5% normal quantile: the sampling-error floor and the "within sampling error" test
Z_POWER = 0.84  # normal quantile of 80% power, for SamplesNeeded


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values with a ``CONFIDENCE`` interval (``lo``/``hi`` None when n < 2), widened to the
    sampling-error floor when ``sampling_se`` is given (module doc)."""

    mean: float
    lo: float | None
    hi: float | None
    n: int
    se: float | None = None  # the mean's standard error: max(sd / sqrt(n), sampling_se); None when neither exists
    sampling_se: float | None = None  # the mean's sampling SE alone (None: the runs logged none)

    @classmethod
    def of(cls, values: Sequence[float], sampling_se: float | None = None) -> Interval:
        x = np.asarray(values, dtype=np.float64)
        if len(x) == 0:
            raise ValueError("an interval needs at least one value")
        mean = float(x.mean())
        if len(x) < 2:  # no seed spread: no interval (a sampling-only one would hide the seed variance)
            return cls(mean, None, None, len(x), sampling_se, sampling_se)
        se = float(x.std(ddof=1) / math.sqrt(len(x)))
        half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, len(x) - 1) * se)
        if sampling_se is not None:
            se, half = max(se, sampling_se), max(half, Z_SAMPLING * sampling_se)
        return cls(mean, mean - half, mean + half, len(x), se, sampling_se)

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


def mean_sampling_se(ses: Sequence[float]) -> float:
    """Sampling SE of the mean of independent runs whose values have sampling SEs ``ses``: sqrt(sum se^2) / n."""
    x = np.asarray(ses, dtype=np.float64)
    return float(math.sqrt(np.sum(x**2)) / len(x))


def ratio_sampling_se(num: Sequence[float], num_se: Sequence[float], den: Sequence[float],
                      den_se: Sequence[float]) -> float | None:
    """Sampling SE of the mean of the pair ratios ``num / den``: per pair, by the delta method,
    ``var = (se_num^2 + ratio^2 se_den^2) / den^2``; over ``m`` pairs ``sqrt(sum var) / m``. None if a den is 0."""
    a, sa, b, sb = (np.asarray(v, dtype=np.float64) for v in (num, num_se, den, den_se))
    if np.any(b == 0):
        return None
    var = (sa**2 + (a / b) ** 2 * sb**2) / b**2
    return float(math.sqrt(np.sum(var)) / len(var))


def _number(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


@dataclass(frozen=True)
class SamplesNeeded:
    """Samples per run at which sampling error alone resolves a difference ``diff`` between two group means
    (two-sided 5%, 80% power), the runs and seeds being as now.

    The group mean's sampling variance at ``N`` samples per run is ``V / N`` with
    ``V = sum_i sigma_i^2 / k^2`` over its ``k`` runs, ``sigma_i = se_i sqrt(n_i)`` the per-sample sd
    (``se_i`` at the run's current count ``n_i``). It resolves ``diff`` when
    ``(Z_SAMPLING + Z_POWER) sqrt(V_base / N + V_cand / N) <= |diff|``, so
    ``N = (Z_SAMPLING + Z_POWER)^2 (V_base + V_cand) / diff^2``. With every run at one count ``n`` this is
    ``factor * n``, ``factor = ((Z_SAMPLING + Z_POWER) sqrt(S_base^2 + S_cand^2) / diff)^2`` with ``S`` the
    groups' mean sampling SEs now; ``factor`` is what is reported when the counts are unknown.
    """

    diff: float  # the difference (metric units) sized for
    factor: float  # x the current sample count; inf when diff is 0
    count: float | None = None  # absolute samples per run, when every run's count is known
    now: int | None = None  # the runs' common current count, when they share one

    @classmethod
    def of(cls, diff: float, base_se: Sequence[float], cand_se: Sequence[float],
           base_n: Sequence[int | None], cand_n: Sequence[int | None]) -> SamplesNeeded:
        z2 = (Z_SAMPLING + Z_POWER) ** 2
        spread = mean_sampling_se(base_se) ** 2 + mean_sampling_se(cand_se) ** 2
        factor = z2 * spread / diff**2 if diff else math.inf
        counts = [*base_n, *cand_n]
        if any(n is None for n in counts):
            return cls(abs(diff), factor)
        v = sum(float(np.dot(np.square(se), n)) / len(se) ** 2 for se, n in ((base_se, base_n), (cand_se, cand_n)))
        count = z2 * v / diff**2 if diff else math.inf
        return cls(abs(diff), factor, count, counts[0] if len(set(counts)) == 1 else None)

    def text(self) -> str:
        if not math.isfinite(self.factor):
            return "n/a (no difference)"
        what = f"for Δ {_number(self.diff)}"
        if self.count is None:
            return f"x{_number(self.factor)} N {what}"
        count = f"{math.ceil(self.count):,}"
        return f"{count} (x{_number(self.factor)} of {self.now}) {what}" if self.now else f"{count} {what}"
