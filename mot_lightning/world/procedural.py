"""The demo world (v2, "procedural"): scenes of several groups of shapes, continuous positions and sizes.

Both demo modes draw from it (``data.demo.mode``: ``fixed``, a finite sample; ``procedural``, an endless
stream); its vocabulary tables (``SHAPES``, ``COLOURS``, ``SIZES``, ``REGIONS``) are the only ones.

A scene (``SceneSpec``) holds 1-3 *groups* (``Group``), each in its own caption region (left, right,
top, bottom, middle); a group is ``count`` (1-3) identical objects of one shape, colour and size class.
Each object (``Placed``) has a continuous centre and radius: positions are drawn anywhere inside the
group's region, radii anywhere inside its size class' range, and objects never overlap. The scene also
names one of several dark backgrounds (plain or gentle gradients).

Geometry (unit square, x to the right, y down; ``region_of`` is the one definition): the *middle* is
the central square of half-side ``MIDDLE_HALF``; outside it the two diagonals cut the picture into
*left*, *right*, *top* and *bottom*. An object's centre (the area centroid of its shape) keeps a margin
``REGION_MARGIN`` from every region border, so "on the left" is never a judgement call, and the radius
ranges of ``small`` and ``large`` are disjoint (``SIZES``). The radius is the half-side of the shape's
bounding box for every shape (a triangle's box is ``2r x 2r`` around its centroid shifted by ``r/3``).

``HELD_OUT`` colour/shape pairs never occur in scenes drawn with ``held_out=False``; a scene drawn with
``held_out=True`` holds at least one of them (a compositional-generalisation split).

Captions, questions and their parser live in ``captions.py``; virtual shards of documents in
``virtual.py``. Scenes that cannot be placed (too many large objects for their regions) are redrawn,
so crowded scenes are rarer than independent attribute draws would make them (``scene_space`` gives the
count of distinct attribute combinations). Imports nothing else from ``mot_lightning``.
"""

from __future__ import annotations

import functools
import io
import math
import random
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
COLOURS = {  # bright and mutually distinct (every pair >= 95 apart in RGB)
    "red": (230, 40, 40),
    "orange": (250, 140, 20),
    "yellow": (245, 230, 50),
    "green": (40, 190, 60),
    "cyan": (40, 220, 230),
    "blue": (50, 90, 240),
    "purple": (150, 60, 210),
    "pink": (255, 120, 200),
    "white": (240, 240, 240),
}
SIZES = {"small": (0.062, 0.08), "large": (0.105, 0.125)}  # radius ranges (fraction of the side), disjoint
REGIONS = ("left", "right", "top", "bottom", "middle")
COUNTS = (1, 2, 3)
MIDDLE_HALF = 0.18  # half-side of the middle square
REGION_MARGIN = 0.03  # an object's centre keeps this far from every region border
GAP = 0.03  # minimum space between the bounding circles of two objects
BORDER = 0.01  # objects stay this far inside the picture
# one pair per colour row at most, every shape twice at most: each colour and shape still occurs in
# training with most partners
HELD_OUT = frozenset({
    ("purple", "triangle"), ("orange", "circle"), ("green", "square"),
    ("cyan", "diamond"), ("pink", "cross"), ("yellow", "ring"),
})
# name -> (top-left RGB, bottom-right RGB, direction); every channel <= 60: far darker than any colour
BACKGROUNDS = {
    "charcoal": ((24, 24, 28), (24, 24, 28), "plain"),
    "navy": ((14, 18, 42), (14, 18, 42), "plain"),
    "forest": ((12, 32, 20), (12, 32, 20), "plain"),
    "dusk": ((10, 12, 30), (44, 20, 48), "vertical"),
    "slate": ((16, 22, 30), (44, 48, 56), "horizontal"),
    "ember": ((48, 18, 12), (12, 12, 18), "diagonal"),
}
SUPERSAMPLE = 4  # objects are drawn at 4x and reduced: anti-aliased edges, sub-pixel positions


@dataclass(frozen=True)
class Group:
    """What a caption says about a group: ``count`` objects of one shape, colour and size in a region."""

    shape: str
    colour: str
    size: str
    count: int
    region: str


@dataclass(frozen=True)
class Placed:
    """One drawn object: centre ``(x, y)`` and ``radius``, as fractions of the image side."""

    x: float
    y: float
    radius: float


@dataclass(frozen=True)
class SceneSpec:
    """A scene: its groups (distinct regions), each group's placed objects, and the background."""

    groups: tuple[Group, ...]
    objects: tuple[tuple[Placed, ...], ...]  # objects[i] holds groups[i].count objects
    background: str

    @property
    def pairs(self) -> frozenset[tuple[str, str]]:
        """The (colour, shape) pairs the scene shows."""
        return frozenset((g.colour, g.shape) for g in self.groups)


# --- geometry -------------------------------------------------------------------------------------
def region_of(x: float, y: float, margin: float = 0.0) -> str | None:
    """The region of point ``(x, y)``; None when it lies within ``margin`` of a region border."""
    dx, dy = x - 0.5, y - 0.5
    ring = max(abs(dx), abs(dy))  # distance from the centre in the max norm
    if ring < MIDDLE_HALF - margin:
        return "middle"
    if ring < MIDDLE_HALF + margin or abs(abs(dx) - abs(dy)) < margin * math.sqrt(2):
        return None  # near the middle square or near a diagonal (distance to it is ||dx|-|dy||/sqrt 2)
    if abs(dx) > abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def extent(shape: str) -> float:
    """Radius of the circle around the shape's centre that holds it, per unit ``radius``."""
    if shape == "triangle":
        return 4 / 3  # the apex sits 4r/3 above the centroid
    if shape == "square":
        return math.sqrt(2)
    return 1.0


def _box(region: str) -> tuple[float, float, float, float]:
    """A box (x0, y0, x1, y1) holding the region (candidates are drawn in it, then checked)."""
    lo, hi = 0.5 - MIDDLE_HALF, 0.5 + MIDDLE_HALF
    return {"middle": (lo, lo, hi, hi), "left": (0, 0, lo, 1), "right": (hi, 0, 1, 1),
            "top": (0, 0, 1, lo), "bottom": (0, hi, 1, 1)}[region]


# --- sampling -------------------------------------------------------------------------------------
def random_scene(rng: random.Random, held_out: bool, max_groups: int = 3) -> SceneSpec:
    """A scene of 1..``max_groups`` groups (uniform); with ``held_out`` at least one group shows a
    ``HELD_OUT`` pair, else none does. All randomness from ``rng``."""
    while True:
        n = rng.randint(1, max_groups)
        regions = rng.sample(REGIONS, n)
        special = rng.randrange(n) if held_out else -1  # the group that surely shows a held-out pair
        groups = tuple(_group(rng, region, held_out=i == special, allow_held_out=held_out)
                       for i, region in enumerate(regions))
        objects = _place_all(rng, groups)
        if objects is not None:
            return SceneSpec(groups, objects, rng.choice(list(BACKGROUNDS)))


def place(groups: tuple[Group, ...], rng: random.Random) -> SceneSpec:
    """A scene showing exactly ``groups`` (distinct regions; e.g. what a caption names), its objects and
    background drawn from ``rng``. ValueError when they cannot be placed (too many large objects)."""
    for _ in range(20):
        objects = _place_all(rng, tuple(groups))
        if objects is not None:
            return SceneSpec(tuple(groups), objects, rng.choice(list(BACKGROUNDS)))
    raise ValueError(f"cannot place the groups {groups}: too many large objects for their regions")


def _group(rng: random.Random, region: str, held_out: bool, allow_held_out: bool) -> Group:
    if held_out:
        colour, shape = rng.choice(sorted(HELD_OUT))
    else:
        while True:
            colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
            if allow_held_out or (colour, shape) not in HELD_OUT:
                break
    return Group(shape, colour, rng.choice(list(SIZES)), rng.choice(COUNTS), region)


def _place_all(rng: random.Random, groups: tuple[Group, ...], tries: int = 12):
    """Non-overlapping objects for every group (in the order of ``groups``), or None when ``tries``
    attempts fail. The groups needing the most room are placed first: fewer crowded scenes fail."""
    order = sorted(range(len(groups)), key=lambda i: -_room(groups[i]))
    for _ in range(tries):
        placed: list[Footprint] = []
        out: dict[int, tuple[Placed, ...]] = {}
        for i in order:
            objs = _place_group(rng, groups[i], placed)
            if objs is None:
                break
            out[i] = objs
        else:
            return tuple(out[i] for i in range(len(groups)))
    return None


def _room(group: Group) -> float:
    """The most area a group's bounding circles can take (up to a constant)."""
    return group.count * (SIZES[group.size][1] * extent(group.shape)) ** 2


class Footprint(NamedTuple):
    """Where an object is: its bounding circle and its bounding box (either one keeps others out)."""

    x: float
    y: float
    reach: float  # radius of the bounding circle
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1)

    def clear_of(self, other: Footprint) -> bool:
        """At least ``GAP`` between the two circles or between the two boxes: the shapes cannot touch."""
        dx, dy, reach = self.x - other.x, self.y - other.y, self.reach + other.reach + GAP
        if dx * dx + dy * dy >= reach * reach:
            return True
        a, b = self.box, other.box
        return a[0] >= b[2] + GAP or b[0] >= a[2] + GAP or a[1] >= b[3] + GAP or b[1] >= a[3] + GAP


def footprint(shape: str, x: float, y: float, radius: float) -> Footprint:
    """The bounding circle and box of a shape centred (area centroid) at ``(x, y)``."""
    top = y - radius * (4 / 3 if shape == "triangle" else 1)  # a triangle's centroid: r/3 below its box's
    return Footprint(x, y, radius * extent(shape), (x - radius, top, x + radius, top + 2 * radius))


def _place_group(rng: random.Random, group: Group, placed: list[Footprint], tries: int = 60):
    lo, hi = SIZES[group.size]
    x0, y0, x1, y1 = _box(group.region)
    objs = []
    for _ in range(group.count):
        radius = rng.uniform(lo, hi)
        up = radius * (4 / 3 if group.shape == "triangle" else 1)  # centre to the top of the box
        # candidates inside the picture by construction; region and overlap are checked
        xa, xb = max(x0, BORDER + radius), min(x1, 1 - BORDER - radius)
        ya, yb = max(y0, BORDER + up), min(y1, 1 - BORDER - (2 * radius - up))
        for _ in range(tries):
            x, y = rng.uniform(xa, xb), rng.uniform(ya, yb)
            if region_of(x, y, REGION_MARGIN) != group.region:
                continue
            fp = footprint(group.shape, x, y, radius)
            if all(fp.clear_of(other) for other in placed):
                break
        else:
            return None
        placed.append(fp)
        objs.append(Placed(x, y, radius))
    return tuple(objs)


def scene_space(max_groups: int = 3) -> int:
    """Distinct scenes up to position, radius and background: ordered-free region sets times the
    attributes of each group (training and held-out pairs together)."""
    per_group = len(SHAPES) * len(COLOURS) * len(SIZES) * len(COUNTS)
    return sum(math.comb(len(REGIONS), k) * per_group**k for k in range(1, max_groups + 1))


# --- rendering ------------------------------------------------------------------------------------
def render_image(scene: SceneSpec, size: int) -> Image.Image:
    """The scene as a ``size x size`` RGB image (objects anti-aliased by supersampling)."""
    big = size * SUPERSAMPLE
    img = _background(scene.background, big).copy()
    draw = ImageDraw.Draw(img)
    for group, objs in zip(scene.groups, scene.objects, strict=True):
        for obj in objs:
            _draw(draw, group.shape, obj.x * big, obj.y * big, obj.radius * big, COLOURS[group.colour])
    return img.reduce(SUPERSAMPLE)


def render(scene: SceneSpec, size: int) -> bytes:
    """PNG bytes of the scene (``size x size`` RGB; ``compress_level=1``: fast, still lossless)."""
    buf = io.BytesIO()
    render_image(scene, size).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


@functools.lru_cache(maxsize=64)
def _background(name: str, size: int) -> Image.Image:
    start, end, direction = BACKGROUNDS[name]
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)
    if direction == "plain":
        ramp = np.zeros((size, size), np.float32)
    elif direction == "vertical":
        ramp = np.repeat(t[:, None], size, axis=1)  # (H, W): rows get lighter downwards
    elif direction == "horizontal":
        ramp = np.repeat(t[None, :], size, axis=0)
    else:
        ramp = (t[:, None] + t[None, :]) / 2
    a, b = np.array(start, np.float32), np.array(end, np.float32)
    rgb = a + ramp[..., None] * (b - a)  # (H, W, 3)
    return Image.fromarray(np.round(rgb).astype(np.uint8), "RGB")


def _draw(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif shape == "ring":  # a disc with a hole of half its radius (background shows through)
        draw.ellipse((x - r, y - r, x + r, y + r), outline=fill, width=max(1, round(r * 0.45)))
    elif shape == "square":
        draw.rectangle((x - r, y - r, x + r, y + r), fill=fill)
    elif shape == "triangle":  # centroid at (x, y): apex 4r/3 above, base 2r/3 below
        draw.polygon([(x, y - 4 * r / 3), (x + r, y + 2 * r / 3), (x - r, y + 2 * r / 3)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=fill)
    elif shape == "cross":  # a plus sign with arms 0.6 r wide
        w = 0.3 * r
        draw.rectangle((x - r, y - w, x + r, y + w), fill=fill)
        draw.rectangle((x - w, y - r, x + w, y + r), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; one of {SHAPES}")
