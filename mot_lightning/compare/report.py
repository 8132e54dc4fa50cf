"""Compare groups of runs (seeds) against a baseline group, one row per (group, loss tag).

Per row: the baseline's and the candidate's mean final (smoothed) loss with 95% intervals
over seeds, the ratio candidate/baseline and the step-matching fractions (matching.py)
per seed pair with mean and interval, and the noise floor: the same ratio and s for the
baseline's seeds against each other (ordered pairs, as a range; stats.py). Flags:

- ``baseline rises``: the baseline's final value is worse than its best by more than the
  noise floor (the spread of its seeds' finals; with one seed, 1% of the best), so ``s``
  against the final value flatters the candidate: read ``s_best``.
- ``brief crossing``: in some pairs the candidate is at/below the target for less than
  ``min_below`` of its logged points after the first crossing.
- ``partial``: a candidate run logged fewer steps than its baseline seed.

Verdict: ``lower``/``higher`` when the ratio's interval excludes 1 and the ratio lies
outside the noise floor's range; ``within noise`` otherwise; ``n/a (1 seed)`` with one pair.

Generation metrics (``val/gen/...``) get rows after the losses, matched in their direction
(``runs.direction``: an accuracy "reaches" the baseline's final value by rising to it, and
"rises"/"ended above" read as "gets worse"/"ended worse"); their verdict adds ``(better)`` or
``(worse)``. A metric without a direction (a duration ratio) shows finals and ratio only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import permutations

import numpy as np

from mot_lightning.compare.groups import Group
from mot_lightning.compare.matching import Match, match_curves, smooth
from mot_lightning.compare.runs import Run, direction, is_gen_tag
from mot_lightning.compare.stats import Interval, Range, pair_by_seed

S_AXES = ("s_steps", "s_best", "s_flops", "s_time")
RISE_WITHOUT_NOISE = 0.01  # one baseline seed: a rise above 1% of the best value is flagged


@dataclass(frozen=True)
class Smoothing:
    """EMA factors over logged points (see matching.py): dense training curves vs sparse validation."""

    train: float = 0.6
    val: float = 0.0

    def factor(self, tag: str) -> float:
        return self.train if tag.startswith("train/") else self.val


@dataclass
class SStat:
    """A step-matching fraction over pairs: the interval over the pairs where it is defined."""

    values: list[float | None]
    undefined: str = ""  # why no pair has a value, when it is not "not reached" (e.g. no FLOPs logged)

    @property
    def reached(self) -> int:
        return sum(v is not None for v in self.values)

    @property
    def interval(self) -> Interval | None:
        got = [v for v in self.values if v is not None]
        return Interval.of(got) if got else None

    def text(self) -> str:
        n, k = len(self.values), self.reached
        if k == 0 and self.undefined:
            return self.undefined
        if k == 0:
            return "not reached" if n == 1 else f"not reached (0/{n})"
        if k < n:  # a mean over the reached pairs alone would be biased: list them
            return f"{k}/{n} reached: " + ", ".join(f"{v:.3f}" for v in self.values if v is not None)
        return self.interval.text()


@dataclass
class Noise:
    """Baseline seeds against each other (ordered pairs)."""

    n_seeds: int
    ratio: Range | None = None
    s_steps: Range | None = None
    spread: float | None = None  # max - min of the seeds' final values (loss units)

    def text(self) -> str:
        if self.n_seeds < 2:
            return "n/a (1 seed)"
        s = "s not reached" if self.s_steps is None else f"s {self.s_steps.lo:.3f}..{self.s_steps.hi:.3f}"
        return f"ratio {self.ratio.lo:.3f}..{self.ratio.hi:.3f}, {s}"


@dataclass
class Row:
    group: str
    key: str
    n_base: int
    n_cand: int
    pairing: str = ""
    base_final: Interval | None = None
    final: Interval | None = None
    ratio: Interval | None = None
    s: dict[str, SStat] = field(default_factory=dict)
    noise: Noise | None = None
    verdict: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def n_pairs(self) -> int:
        return self.ratio.n if self.ratio is not None else 0


def compare_groups(groups: list[Group], baseline: int, smoothing: Smoothing, min_below: float = 0.5) -> list[Row]:
    """Every non-baseline group against ``groups[baseline]`` on every loss tag any run logged."""
    base = groups[baseline]
    tags = {t for g in groups for r in g.runs for t in r.compared_tags}
    keys = sorted(t for t in tags if not is_gen_tag(t)) + sorted(t for t in tags if is_gen_tag(t))
    noise = {key: noise_floor(base, key, smoothing.factor(key)) for key in keys}
    return [_row(g, base, key, smoothing.factor(key), noise[key], min_below)
            for i, g in enumerate(groups) if i != baseline for key in keys]


def finals(group: Group, key: str, factor: float) -> list[float]:
    return [float(smooth(r.scalars[key].values, factor)[-1]) for r in group.runs if key in r.scalars]


def noise_floor(base: Group, key: str, factor: float) -> Noise:
    runs = [r for r in base.runs if key in r.scalars]
    noise = Noise(len(runs))
    if len(runs) < 2:
        return noise
    matches = [_match(a, b, key, factor) for a, b in permutations(runs, 2)]
    noise.ratio = Range.of([m.ratio for m in matches])
    noise.s_steps = Range.of([m.s_steps for m in matches if m.s_steps is not None])
    f = finals(base, key, factor)
    noise.spread = max(f) - min(f)
    return noise


def _match(run: Run, base: Run, key: str, factor: float) -> Match:
    higher = direction(key) == "higher"
    return match_curves(run.scalars[key], base.scalars[key], factor, run.flops, base.flops, higher=higher)


def _row(cand: Group, base: Group, key: str, factor: float, noise: Noise, min_below: float) -> Row:
    row = Row(cand.label, key, sum(key in r.scalars for r in base.runs), sum(key in r.scalars for r in cand.runs))
    for g, n in ((base, row.n_base), (cand, row.n_cand)):
        if n == 0:
            row.notes.append(f"n/a: {'baseline ' if g is base else ''}{g.label} never logged {key}")
    if row.notes:
        return row
    b_runs = [r for r in base.runs if key in r.scalars]
    c_runs = [r for r in cand.runs if key in r.scalars]
    pairs, row.pairing = pair_by_seed([r.seed for r in b_runs], [r.seed for r in c_runs])
    matches = [_match(c_runs[j], b_runs[i], key, factor) for i, j in pairs]
    row.base_final = Interval.of(finals(base, key, factor))
    row.final = Interval.of(finals(cand, key, factor))
    row.ratio = Interval.of([m.ratio for m in matches])
    row.s = {axis: SStat([getattr(m, axis) for m in matches]) for axis in S_AXES}
    if any(r.flops is None for r in (*b_runs, *c_runs)):
        row.s["s_flops"].undefined = "n/a (no train/total_flops)"
    row.noise = noise
    if direction(key) is None:  # no better side: finals and ratio only
        row.s = {axis: SStat([None] * len(matches), "n/a (no direction)") for axis in S_AXES}
        row.verdict = _verdict(row.ratio, noise)
        return row
    row.notes += _flags(matches, noise, min_below, [c_runs[j] for _, j in pairs], [b_runs[i] for i, _ in pairs], key)
    row.verdict = _verdict(row.ratio, noise)
    if is_gen_tag(key) and row.verdict in ("lower", "higher"):
        row.verdict += " (better)" if row.verdict == direction(key) else " (worse)"
    return row


def _flags(matches: list[Match], noise: Noise, min_below: float, cands: list[Run], bases: list[Run],
           key: str) -> list[str]:
    flags = []
    # words for a better-lower metric, mirrored for a better-higher one
    rises, below, above = ("rises", "below", "above") if matches[0].sign > 0 else ("falls", "above", "below")
    rise = float(np.mean([m.sign * (m.base_final - m.base_best) for m in matches]))  # >= 0: got worse
    floor = noise.spread if noise.spread is not None else RISE_WITHOUT_NOISE * abs(matches[0].base_best)
    if rise > floor:
        what = "its seeds' spread" if noise.spread is not None else "1% of its best (1 seed, no noise floor)"
        flags.append(f"baseline {rises}: final worse than best by {rise:.3g} > {what} {floor:.3g}; read s_best")
    brief = sum(m.below_fraction is not None and m.below_fraction < min_below for m in matches)
    if brief:
        flags.append(f"brief crossing in {brief}/{len(matches)} pairs: {below} the target at < {min_below:.0%} "
                     "of the points after the first crossing")
    ended_above = sum(m.match_step is not None and m.sign * (m.final - m.base_final) > 0 for m in matches)
    if ended_above:
        flags.append(f"reached but ended {above} the baseline in {ended_above}/{len(matches)} pairs")
    short = [(c, b) for c, b in zip(cands, bases) if c.scalars[key].last_step < b.scalars[key].last_step]
    if short:
        c, b = short[0]
        flags.append(f"partial in {len(short)}/{len(matches)} pairs: logged to step "
                     f"{c.scalars[key].last_step:g} of the baseline's {b.scalars[key].last_step:g}")
    missing = sorted({n for m in matches for n in m.notes if n.startswith("no train/total_flops")})
    return flags + missing


def _verdict(ratio: Interval, noise: Noise) -> str:
    if ratio.n < 2:
        return "n/a (1 seed)"
    outside = noise.ratio is None or not (noise.ratio.lo <= ratio.mean <= noise.ratio.hi)
    if ratio.excludes(1.0) and outside:
        return "lower" if ratio.mean < 1 else "higher"
    return "within noise"
