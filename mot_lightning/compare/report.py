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
outside the noise floor's range; ``within noise`` otherwise; ``n/a (1 seed)`` with one pair;
``within sampling error`` before all of them for generation metrics with sampling SEs (below).

Generation metrics (``val/gen/...``) get rows after the losses, matched in their direction
(``runs.direction``: an accuracy "reaches" the baseline's final value by rising to it, and
"rises"/"ended above" read as "gets worse"/"ended worse"); their verdict adds ``(better)`` or
``(worse)``. A metric without a direction (a duration ratio) shows finals and ratio only.

Sampling error: when every run of a generation-metric row logged its SE (``val/gen_se/<metric>``, read at the
metric's final step), the row also carries each group mean's sampling SE ``S = sqrt(sum se_i^2) / n`` and:

- intervals floored by it: the finals' and the ratio's half-widths are ``max(t * sd / sqrt(n), 1.96 * S)``
  (stats.py; the ratio's ``S`` by the delta method over the seed pairs), so two or three seeds that happen to
  agree cannot claim more precision than the sample sets allow;
- verdict ``within sampling error`` when ``|mean_cand - mean_base| <= 1.96 * sqrt(S_base^2 + S_cand^2)``,
  ahead of the other verdicts: such a difference is not resolved by the samples even where the seeds'
  interval excludes 1. The sampling SEs alone are used here (not ``max(sd / sqrt(n), S)``), so a seed
  spread is never called sampling error, and with negligible SEs the verdict is the one without them;
- ``samples``: the samples per run at which sampling error alone resolves the difference (two-sided 5%,
  80% power; ``stats.SamplesNeeded``), sized for the observed difference or for ``detect`` x the baseline's mean.

The SE used is the one logged with the final point, also when val curves are smoothed (``--val-smoothing``): an
EMA over points scored on the same prompts does not shrink their shared sampling error much. Runs of one row
that logged no SE (older runs) leave the row as without SEs, with a note when only some did.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import permutations

import numpy as np

from mot_lightning.compare.groups import Group
from mot_lightning.compare.matching import Match, match_curves, smooth
from mot_lightning.compare.runs import Run, direction, is_gen_tag
from mot_lightning.compare.stats import (
    Z_SAMPLING,
    Interval,
    Range,
    SamplesNeeded,
    mean_sampling_se,
    pair_by_seed,
    ratio_sampling_se,
)

S_AXES = ("s_steps", "s_best", "s_flops", "s_time")
RISE_WITHOUT_NOISE = 0.01  # one baseline seed: a rise above 1% of the best value is flagged
WITHIN_SAMPLING = "within sampling error"


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
    samples: SamplesNeeded | None = None  # samples per run to resolve the difference (runs with sampling SEs)

    @property
    def sampled(self) -> bool:
        """The finals carry the groups' sampling SEs (every run of the row logged one)."""
        return self.final is not None and self.final.sampling_se is not None

    @property
    def n_pairs(self) -> int:
        return self.ratio.n if self.ratio is not None else 0


def compare_groups(groups: list[Group], baseline: int, smoothing: Smoothing, min_below: float = 0.5,
                   detect: float | None = None) -> list[Row]:
    """Every non-baseline group against ``groups[baseline]`` on every compared tag any run logged; ``detect``
    (a relative difference) sizes the samples needed for it instead of for the observed difference."""
    base = groups[baseline]
    tags = {t for g in groups for r in g.runs for t in r.compared_tags}
    keys = sorted(t for t in tags if not is_gen_tag(t)) + sorted(t for t in tags if is_gen_tag(t))
    noise = {key: noise_floor(base, key, smoothing.factor(key)) for key in keys}
    return [_row(g, base, key, smoothing.factor(key), noise[key], min_below, detect)
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


def _row(cand: Group, base: Group, key: str, factor: float, noise: Noise, min_below: float,
         detect: float | None = None) -> Row:
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
    b_se, c_se = [r.final_se(key) for r in b_runs], [r.final_se(key) for r in c_runs]
    sampled = all(se is not None for se in (*b_se, *c_se))
    row.base_final = Interval.of(finals(base, key, factor), mean_sampling_se(b_se) if sampled else None)
    row.final = Interval.of(finals(cand, key, factor), mean_sampling_se(c_se) if sampled else None)
    ratio_se = None if not sampled else ratio_sampling_se(
        [m.final for m in matches], [c_se[j] for _, j in pairs], [m.base_final for m in matches],
        [b_se[i] for i, _ in pairs])
    row.ratio = Interval.of([m.ratio for m in matches], ratio_se)
    row.s = {axis: SStat([getattr(m, axis) for m in matches]) for axis in S_AXES}
    if any(r.flops is None for r in (*b_runs, *c_runs)):
        row.s["s_flops"].undefined = "n/a (no train/total_flops)"
    row.noise = noise
    if sampled:
        diff = row.final.mean - row.base_final.mean if detect is None else detect * row.base_final.mean
        row.samples = SamplesNeeded.of(diff, b_se, c_se, [r.sample_count(key) for r in b_runs],
                                       [r.sample_count(key) for r in c_runs])
    elif any(se is not None for se in (*b_se, *c_se)):
        have = sum(se is not None for se in (*b_se, *c_se))
        row.notes.append(f"sampling se logged by {have}/{len(b_se) + len(c_se)} runs only: intervals and verdict "
                         "over seeds alone")
    if direction(key) is None:  # no better side: finals and ratio only
        row.s = {axis: SStat([None] * len(matches), "n/a (no direction)") for axis in S_AXES}
        row.verdict = _verdict(row)
        return row
    row.notes += _flags(matches, noise, min_below, [c_runs[j] for _, j in pairs], [b_runs[i] for i, _ in pairs], key)
    row.verdict = _verdict(row)
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


def within_sampling_error(row: Row) -> bool:
    """The difference of the group means is within ``Z_SAMPLING`` x their combined sampling SE (module doc)."""
    if not row.sampled:
        return False
    spread = math.hypot(row.base_final.sampling_se, row.final.sampling_se)
    return spread > 0 and abs(row.final.mean - row.base_final.mean) <= Z_SAMPLING * spread


def _verdict(row: Row) -> str:
    if within_sampling_error(row):
        return WITHIN_SAMPLING
    ratio, noise = row.ratio, row.noise
    if ratio.n < 2:
        return "n/a (1 seed)"
    outside = noise.ratio is None or not (noise.ratio.lo <= ratio.mean <= noise.ratio.hi)
    if ratio.excludes(1.0) and outside:
        return "lower" if ratio.mean < 1 else "higher"
    return "within noise"
