"""Step matching as the paper measures it, on plain arrays (no I/O, no plotting).

The paper's number: s = (first step at which a run's loss reaches the baseline's
*final* loss) / (the baseline's final step); s < 1 means the run gets there faster.

Choices, documented once here:
- Curves are smoothed before matching with an exponential moving average over
  *logged points* (``y[0] = x[0]``, ``y[i] = f*y[i-1] + (1-f)*x[i]``), the same rule
  as TensorBoard's slider without its zero-debiasing (starting from ``x[0]`` needs none).
  The baseline's target and the run's curve use the same factor, so the EMA lag
  affects both alike. The CLI smooths training curves with 0.6 by default and
  leaves validation curves unsmoothed (factor 0): each validation point already
  averages a whole held-out set, and with a handful of points an EMA would lag by
  a large share of the run.
- The crossing step is interpolated linearly between the last logged point above
  the target and the first at or below it; a run already at or below the target
  at its first logged point matches at that step.
- The FLOPs and wall-clock of the match are read off the run's cumulative FLOPs
  and active time at the (interpolated) matching step, and divided by the
  baseline's at its final step.
- Steps are the logged optimizer-step values, used as they are.
- A baseline that ends worse than its best (validation loss rising while it memorises)
  makes "reaches the baseline's final value" easy for the wrong reason, so every match
  also reports ``s_best``: the first step at which the run reaches the baseline's *best*
  (lowest smoothed) value, divided by the step at which the baseline got there.
- ``below_fraction``: the share of the run's logged points from its first crossing on
  that are at or below the target. A curve that dips below once and comes back up has a
  small share; the report flags such "brief" crossings.
- Direction: losses (and FID, error rates) are better lower. For a metric that is better
  higher (an accuracy, BLEU) ``match_curves(..., higher=True)`` matches the mirrored curves:
  "reaches" is "rises to", "best" is the highest value, "below" is "at or above". ``Match``
  keeps the values as logged either way.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Series:
    """One scalar curve: ``steps`` increasing; ``times`` are active seconds since the run began."""

    steps: np.ndarray  # (N,) float64
    values: np.ndarray  # (N,) float64
    times: np.ndarray  # (N,) float64

    def __post_init__(self) -> None:
        if not (len(self.steps) == len(self.values) == len(self.times)) or len(self.steps) == 0:
            raise ValueError("a Series needs equally long, non-empty steps/values/times")

    @classmethod
    def of(cls, steps, values, times=None) -> Series:
        steps = np.asarray(steps, dtype=np.float64)
        times = steps if times is None else times
        return cls(steps, np.asarray(values, dtype=np.float64), np.asarray(times, dtype=np.float64))

    @property
    def last_step(self) -> float:
        return float(self.steps[-1])

    def at(self, step: float) -> float:
        """Value interpolated linearly at ``step`` (clamped to the first/last point)."""
        return float(np.interp(step, self.steps, self.values))

    def time_at(self, step: float) -> float:
        return float(np.interp(step, self.steps, self.times))


@dataclass
class Match:
    """A run's curve against the baseline's for one loss tag. ``None`` = undefined (see ``notes``)."""

    final: float  # run's last smoothed loss
    base_final: float  # baseline's last smoothed loss = the target
    base_best: float = float("nan")  # baseline's lowest smoothed loss ...
    base_best_step: float = float("nan")  # ... and the step where it got there
    match_step: float | None = None
    s_steps: float | None = None
    s_flops: float | None = None
    s_time: float | None = None
    s_best: float | None = None  # first reach of base_best / base_best_step
    below_fraction: float | None = None  # share of the run's points from the match on at/below the target
    notes: list[str] = field(default_factory=list)
    higher: bool = False  # the metric is better higher (see the module doc)

    @property
    def sign(self) -> float:
        """+1 for lower-is-better, -1 for higher-is-better: ``sign * (a - b) > 0`` means a is worse than b."""
        return -1.0 if self.higher else 1.0

    @property
    def ratio(self) -> float:
        return self.final / self.base_final if self.base_final else float("nan")


def smooth(values: np.ndarray, factor: float) -> np.ndarray:
    """EMA over logged points; ``factor`` 0 returns the values unchanged (see module doc)."""
    if not 0.0 <= factor < 1.0:
        raise ValueError(f"smoothing factor must be in [0, 1), got {factor}")
    values = np.asarray(values, dtype=np.float64)
    out = np.empty_like(values)
    acc = values[0]
    for i, v in enumerate(values):
        acc = factor * acc + (1.0 - factor) * v
        out[i] = acc
    return out


def first_crossing(steps: np.ndarray, values: np.ndarray, target: float) -> float | None:
    """First (linearly interpolated) step where ``values`` <= ``target``; None if never."""
    below = np.nonzero(values <= target)[0]
    if len(below) == 0:
        return None
    i = int(below[0])
    if i == 0:
        return float(steps[0])
    s0, s1, v0, v1 = steps[i - 1], steps[i], values[i - 1], values[i]
    return float(s0 + (v0 - target) * (s1 - s0) / (v0 - v1))  # v0 > target >= v1


def below_fraction(values: np.ndarray, target: float) -> float | None:
    """Share of the points from the first one at or below ``target`` on that are at or below it."""
    below = values <= target
    first = np.nonzero(below)[0]
    return None if len(first) == 0 else float(below[first[0]:].mean())


def match_curves(run: Series, base: Series, factor: float = 0.0,
                 run_flops: Series | None = None, base_flops: Series | None = None, higher: bool = False) -> Match:
    """Step, FLOPs and wall-clock fractions at which ``run`` first reaches ``base``'s final loss
    (``higher``: a better-higher metric, matched mirrored; see the module doc)."""
    run_s, base_s = smooth(run.values, factor), smooth(base.values, factor)
    sign = -1.0 if higher else 1.0
    best = int(np.argmin(sign * base_s))
    m = Match(final=float(run_s[-1]), base_final=float(base_s[-1]), base_best=float(base_s[best]),
              base_best_step=float(base.steps[best]), higher=higher)
    best_step = first_crossing(run.steps, sign * run_s, sign * m.base_best)
    if best_step is not None:
        m.s_best = _fraction(best_step, m.base_best_step)
    m.match_step = first_crossing(run.steps, sign * run_s, sign * m.base_final)
    if m.match_step is None:
        m.notes.append("not reached")
        return m
    m.below_fraction = below_fraction(sign * run_s, sign * m.base_final)
    m.s_steps = _fraction(m.match_step, base.last_step)
    m.s_time = _fraction(run.time_at(m.match_step), float(base.times[-1]))
    if run_flops is None or base_flops is None:
        m.notes.append("no train/total_flops in " + ("run" if run_flops is None else "baseline"))
    else:
        m.s_flops = _fraction(run_flops.at(m.match_step), base_flops.at(base.last_step))
    return m


def _fraction(x: float, of: float) -> float | None:
    return x / of if of > 0 else None
