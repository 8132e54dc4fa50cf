"""Does a picture show what its caption says? Attribute by attribute, from groups.

``named``: the groups a caption names (``World.parse``); ``shown``: the groups a picture shows (the
scorer's reading, or the truth of a render). Each named group is judged *in its own region*, so an
attribute bound to the wrong place does not count (a red circle asked for on the left and drawn on the
right is a miss for its colour, shape, size and count as well as its position):

- ``position``: the picture shows a group in the named region;
- ``colour`` / ``shape`` / ``size`` / ``count``: that group has the named value;
- ``all`` (per picture): every named group right on all five, and nothing in a region the caption does
  not name (the picture shows exactly the caption).

Attribute accuracies are over named groups, ``all`` over pictures. The same function measures the scorer
itself (``named`` = the render's true groups, ``shown`` = the scorer's reading) and a caption model
(``named`` = the true groups of an image, ``shown`` = the groups its generated caption names).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mot_lightning.world.procedural import Group

ATTRIBUTES = ("colour", "shape", "size", "count", "position")


@dataclass(frozen=True)
class Judgement:
    """One picture against one caption: per named group, which attributes hold; and whether all do."""

    groups: tuple[dict[str, bool], ...]
    extra: int  # groups shown in regions the caption does not name

    @property
    def all_correct(self) -> bool:
        return self.extra == 0 and all(all(g.values()) for g in self.groups)


def judge(named: Sequence[Group], shown: Sequence[Group]) -> Judgement:
    by_region = {g.region: g for g in shown}
    verdicts = []
    for g in named:
        s = by_region.get(g.region)
        verdicts.append({
            "colour": s is not None and s.colour == g.colour,
            "shape": s is not None and s.shape == g.shape,
            "size": s is not None and s.size == g.size,
            "count": s is not None and s.count == g.count,
            "position": s is not None,
        })
    named_regions = {g.region for g in named}
    return Judgement(tuple(verdicts), sum(r not in named_regions for r in by_region))


def accuracy(named: Sequence[Sequence[Group]], shown: Sequence[Sequence[Group]]) -> dict[str, float]:
    """``{attribute: accuracy over named groups, "all": share of pictures all right}`` (floats in [0, 1]).

    Pictures whose caption names no group (an unreadable generated caption) count as not all right and
    add no group."""
    if len(named) != len(shown):
        raise ValueError(f"need one shown scene per named scene, got {len(named)} and {len(shown)}")
    if not named:
        raise ValueError("accuracy of no pictures is undefined")
    judged = [judge(n, s) for n, s in zip(named, shown)]
    groups = [v for j in judged for v in j.groups]
    out = {a: (sum(v[a] for v in groups) / len(groups) if groups else 0.0) for a in ATTRIBUTES}
    out["all"] = sum(j.all_correct and bool(j.groups) for j in judged) / len(judged)
    return out
