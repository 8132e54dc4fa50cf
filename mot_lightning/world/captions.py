"""Language of the procedural world: captions, questions, and the parser that reads captions back.

A caption names every group of a scene (``procedural.py``) with its count, size, colour, shape and
region, in one of two phrase orders, the groups in shuffled order:

- *group first*: ``two small red circles on the left`` inside a sentence frame (``FRAMES``: ``{}.``,
  ``a picture of {}.``, ``there are {}.``, ...), groups joined as ``A``, ``A and B``, ``A, B and C``;
- *region first*: ``on the left there are two small red circles and at the top there is a big blue
  square.``

Words vary by synonym (``COUNT_WORDS``: ``a``/``one``; ``SIZE_WORDS``: ``small``/``little``,
``large``/``big``; ``REGION_PHRASES``: ``in the middle``/``in the centre``/...). ``parse_caption``
inverts every one of these forms (``parse_caption(caption(scene, rng))`` gives ``scene.groups`` in
caption order); the faithfulness scorer reads generated captions with it.

Questions ask for a group's colour, shape, count, size or position (``question``), followed by the
answer: ``question: what colour are the circles on the left? answer: red.``
"""

from __future__ import annotations

import random
import re

from mot_lightning.world.procedural import COLOURS, SHAPES, Group, SceneSpec

COUNT_WORDS = {1: ("one", "a"), 2: ("two",), 3: ("three",)}
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
REGION_PHRASES = {
    "left": ("on the left", "on the left side"),
    "right": ("on the right", "on the right side"),
    "top": ("at the top", "near the top"),
    "bottom": ("at the bottom", "near the bottom"),
    "middle": ("in the middle", "in the centre", "in the center"),
}
PLURALS = {shape: shape + ("es" if shape.endswith("s") else "s") for shape in SHAPES}
# group-first sentence frames; "{verb}" agrees with the first group named
FRAMES = ("{}.", "a picture of {}.", "there {verb} {}.", "this image shows {}.", "we can see {}.",
          "an image with {}.")

_COUNT_OF = {w: n for n, words in COUNT_WORDS.items() for w in words}
_SIZE_OF = {w: s for s, words in SIZE_WORDS.items() for w in words}
_SHAPE_OF = {**{s: (s, False) for s in SHAPES}, **{p: (s, True) for s, p in PLURALS.items()}}
_REGION_OF = {tuple(p.split()): r for r, phrases in REGION_PHRASES.items() for p in phrases}
# longest phrases first, so "on the left side" is not read as "on the left" + "side"
_REGION_KEYS = sorted(_REGION_OF, key=len, reverse=True)
# the words of the frames and of the region-first clauses ("there is", "and"): skipped when parsing
_FRAME_WORDS = re.sub(r"[^a-z ]", " ", " ".join(FRAMES).replace("{verb}", "is are")).split()
_FILLER = frozenset([*_FRAME_WORDS, "there", "and"])


def noun(shape: str, count: int) -> str:
    return shape if count == 1 else PLURALS[shape]


def verb(count: int) -> str:
    return "is" if count == 1 else "are"


def group_phrase(group: Group, rng: random.Random) -> str:
    """``two small red circles`` (count, size, colour, shape; synonyms drawn from ``rng``)."""
    count = rng.choice(COUNT_WORDS[group.count])
    size = rng.choice(SIZE_WORDS[group.size])
    return f"{count} {size} {group.colour} {noun(group.shape, group.count)}"


def where(region: str, rng: random.Random) -> str:
    return rng.choice(REGION_PHRASES[region])


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def caption(scene: SceneSpec, rng: random.Random, frames: tuple[str, ...] = FRAMES) -> str:
    """One sentence naming every group of ``scene`` (order, frame and synonyms drawn from ``rng``;
    group-first captions use one of ``frames``, a subset of ``FRAMES``)."""
    groups = list(scene.groups)
    rng.shuffle(groups)
    if rng.random() < 0.25:  # region first
        clauses = [f"{where(g.region, rng)} there {verb(g.count)} {group_phrase(g, rng)}" for g in groups]
        return _join(clauses) + "."
    frame = rng.choice(frames)
    listed = _join([f"{group_phrase(g, rng)} {where(g.region, rng)}" for g in groups])
    return frame.replace("{verb}", verb(groups[0].count)).format(listed)


# --- questions ------------------------------------------------------------------------------------
QUESTION_KINDS = ("colour", "shape", "count", "size", "position")


def question(scene: SceneSpec, rng: random.Random, kind: str | None = None) -> str:
    """A question about one group of ``scene`` and its answer (``kind`` drawn when None).

    A group is named by its region (one group per region), except in position questions, which name it
    by size, colour and shape; when two groups share those, a colour question is asked instead.
    """
    group = rng.choice(scene.groups)
    kind = kind or rng.choice(QUESTION_KINDS)
    same = [g for g in scene.groups if (g.size, g.colour, g.shape) == (group.size, group.colour, group.shape)]
    if kind == "position" and len(same) > 1:
        kind = "colour"
    n, be, place = group.count, verb(group.count), where(group.region, rng)
    if kind == "colour":
        q, a = f"what colour {be} the {noun(group.shape, n)} {place}?", group.colour
    elif kind == "shape":
        things = "object" if n == 1 else "objects"
        q, a = f"what shape {be} the {group.colour} {things} {place}?", noun(group.shape, n)
    elif kind == "count":
        q, a = f"how many {group.colour} {PLURALS[group.shape]} are {place}?", COUNT_WORDS[n][0]
    elif kind == "size":
        q, a = f"what size {be} the {group.colour} {noun(group.shape, n)} {place}?", group.size
    elif kind == "position":
        size = SIZE_WORDS[group.size][0]
        q, a = f"where {be} the {size} {group.colour} {noun(group.shape, n)}?", place
    else:
        raise ValueError(f"unknown question kind {kind!r}; one of {QUESTION_KINDS}")
    return f"question: {q} answer: {a}."


# --- parsing --------------------------------------------------------------------------------------
class CaptionError(ValueError):
    """A caption that ``parse_caption(..., strict=True)`` cannot read completely."""


def parse_caption(text: str, strict: bool = True) -> list[Group]:
    """The groups a caption names, in caption order (the inverse of ``caption``).

    Reads both phrase orders, every frame and synonym; case and punctuation are ignored. ``strict``:
    raise ``CaptionError`` on any word it cannot place, a group without a region (or a region without a
    group), a count that disagrees with the noun's number, or two groups in one region. Not strict (for
    generated captions): return the complete groups it finds and skip the rest.
    """
    words = re.sub(r"[^a-z ]", " ", text.lower()).split()
    items: list[tuple[str, object]] = []  # ("group", (count, size, colour, shape)) or ("region", name)
    i = 0
    while i < len(words):
        region = _match_region(words, i)
        phrase = _match_group(words, i)
        if region is not None:
            items.append(("region", region[0]))
            i += region[1]
        elif phrase is not None:
            items.append(("group", phrase))
            i += 4
        elif strict and words[i] not in _FILLER:
            raise CaptionError(f"cannot read {words[i]!r} in caption {text!r}")
        else:
            i += 1
    return _pair(items, text, strict)


def _match_region(words: list[str], i: int) -> tuple[str, int] | None:
    for key in _REGION_KEYS:
        if tuple(words[i:i + len(key)]) == key:
            return _REGION_OF[key], len(key)
    return None


def _match_group(words: list[str], i: int) -> tuple[int, str, str, str] | None:
    """``count size colour shape`` starting at ``words[i]``, the noun's number agreeing with the count."""
    if i + 4 > len(words):
        return None
    count_w, size_w, colour, shape_w = words[i:i + 4]
    if not (count_w in _COUNT_OF and size_w in _SIZE_OF and colour in COLOURS and shape_w in _SHAPE_OF):
        return None
    count, (shape, plural) = _COUNT_OF[count_w], _SHAPE_OF[shape_w]
    if plural != (count > 1):
        return None
    return count, _SIZE_OF[size_w], colour, shape


def _pair(items: list[tuple[str, object]], text: str, strict: bool) -> list[Group]:
    """Give each group its region: the next one (group-first captions) or the one before it (region-first
    captions, recognised by a region before the first group)."""
    first = "region" if items and items[0][0] == "region" else "group"  # what opens each pair
    groups: list[Group] = []
    waiting = None  # the opening item whose partner has not come yet
    for kind, value in items:
        if kind == first:
            if waiting is not None:
                _fail(strict, f"a {kind} without its partner in {text!r}")
            waiting = value
        elif waiting is None:
            _fail(strict, f"a {kind} without its partner in {text!r}")
        else:
            phrase, region = (waiting, value) if first == "group" else (value, waiting)
            groups.append(_group(phrase, region))
            waiting = None
    if waiting is not None:
        _fail(strict, f"a {first} without its partner at the end of {text!r}")
    regions = [g.region for g in groups]
    if len(set(regions)) != len(regions):
        _fail(strict, f"two groups in one region in {text!r}")
    if strict and not groups:
        raise CaptionError(f"no group in caption {text!r}")
    return groups


def _group(phrase, region: str) -> Group:
    count, size, colour, shape = phrase
    return Group(shape, colour, size, count, region)


def _fail(strict: bool, message: str) -> None:
    if strict:
        raise CaptionError(message)

