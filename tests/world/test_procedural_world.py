"""The procedural demo world: unambiguous geometry, a caption parser that inverts every caption, a held-out
split that holds, and renders that look like what the scene says."""
from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from mot_lightning.world import captions, procedural
from mot_lightning.world.captions import CaptionError, caption, parse_caption, question
from mot_lightning.world.procedural import (
    BACKGROUNDS,
    COLOURS,
    HELD_OUT,
    SIZES,
    Group,
    Placed,
    SceneSpec,
    random_scene,
    region_of,
    render,
    render_image,
)


def scenes(n: int, held_out: bool, seed: int = 0) -> list[SceneSpec]:
    rng = random.Random(seed)
    return [random_scene(rng, held_out) for _ in range(n)]


def test_caption_parser_round_trips_every_template_and_synonym():
    rng = random.Random(1)
    seen_words: set[str] = set()
    for scene in scenes(3000, held_out=False) + scenes(1000, held_out=True, seed=2):
        text = caption(scene, rng)
        seen_words |= set(text.replace(".", " ").replace(",", " ").split())
        parsed = parse_caption(text)
        assert sorted(parsed, key=repr) == sorted(scene.groups, key=repr), text
        assert parse_caption(text.upper().replace(",", " ;"), strict=True) == parsed  # case, punctuation
    synonyms = {w for words in captions.COUNT_WORDS.values() for w in words}
    synonyms |= {w for words in captions.SIZE_WORDS.values() for w in words}
    synonyms |= {"centre", "center", "side", "near", "picture", "shows", "see", "there"}
    assert synonyms <= seen_words, f"never generated: {synonyms - seen_words}"


@pytest.mark.parametrize("text, problem", [
    ("two small red circle on the left.", "number"),          # count and noun disagree
    ("one small red circle.", "no region"),
    ("on the left.", "no group"),
    ("one small red circle on the left and one big blue square on the left.", "one region twice"),
    ("one small mauve circle on the left.", "unknown colour"),
])
def test_strict_parser_refuses_what_no_template_makes(text, problem):
    with pytest.raises(CaptionError):
        parse_caption(text)


def test_lenient_parser_keeps_the_complete_groups_of_a_garbled_caption():
    text = "we can see two small red circles on the left and a bgi blue square at the top and blah."
    assert parse_caption(text, strict=False) == [Group("circle", "red", "small", 2, "left")]


def test_questions_answer_from_the_scene():
    rng = random.Random(3)
    for scene in scenes(300, held_out=False):
        for kind in captions.QUESTION_KINDS:
            text = question(scene, rng, kind)
            q, a = text.removeprefix("question: ").split(" answer: ")
            answer = a.rstrip(".")
            by_region = [g for g in scene.groups if any(p in q for p in captions.REGION_PHRASES[g.region])]
            if kind == "colour":
                assert answer in {g.colour for g in by_region}
            elif kind == "count":
                assert answer in {captions.COUNT_WORDS[g.count][0] for g in by_region}
            elif kind == "size":
                assert answer in {g.size for g in by_region}
            elif kind == "shape":
                assert answer in {captions.noun(g.shape, g.count) for g in by_region}
            else:
                named = [g for g in scene.groups if f" {g.colour} {captions.noun(g.shape, g.count)}?" in q]
                assert any(answer in captions.REGION_PHRASES[g.region] for g in named) or "colour" in q


def test_held_out_pairs_never_in_training_scenes_and_always_in_held_out_scenes():
    assert all(not (s.pairs & HELD_OUT) for s in scenes(5000, held_out=False))
    held = scenes(2000, held_out=True)
    assert all(s.pairs & HELD_OUT for s in held)
    # every held-out pair occurs, and each colour and shape of a held-out pair also occurs in training
    assert set().union(*(s.pairs & HELD_OUT for s in held)) == HELD_OUT
    train_pairs = set().union(*(s.pairs for s in scenes(5000, held_out=False)))
    assert all(any(c == colour for c, _ in train_pairs) and any(s == shape for _, s in train_pairs)
               for colour, shape in HELD_OUT)


def test_scenes_vary_in_every_attribute_and_never_overlap():
    drawn = scenes(3000, held_out=False)
    groups = [g for s in drawn for g in s.groups]
    for attr, values in (("shape", procedural.SHAPES), ("colour", COLOURS), ("size", SIZES),
                         ("count", procedural.COUNTS), ("region", procedural.REGIONS)):
        assert {getattr(g, attr) for g in groups} == set(values), attr
    assert {len(s.groups) for s in drawn} == {1, 2, 3}
    assert {s.background for s in drawn} == set(BACKGROUNDS)
    for scene in drawn:
        regions = [g.region for g in scene.groups]
        assert len(set(regions)) == len(regions)
        prints = [procedural.footprint(g.shape, o.x, o.y, o.radius)
                  for g, objs in zip(scene.groups, scene.objects, strict=True) for o in objs]
        assert [len(o) for o in scene.objects] == [g.count for g in scene.groups]
        assert all(a.clear_of(b) for a, b in itertools.combinations(prints, 2))
        assert all(0 <= p.box[0] and p.box[2] <= 1 and 0 <= p.box[1] and p.box[3] <= 1 for p in prints)


def _object_pixels(group: Group, obj: Placed, side: int) -> np.ndarray:
    """bool[side, side]: the pixels one object covers, rendered alone on a plain background."""
    alone = SceneSpec((group,), ((obj,),), "charcoal")
    pixels = np.asarray(render_image(alone, side), dtype=np.int32)  # (H, W, 3)
    return np.abs(pixels - np.array(BACKGROUNDS["charcoal"][0])).sum(axis=2) > 60


def test_rendered_objects_sit_in_their_region_and_sizes_are_unambiguous():
    side = 64
    extents: dict[str, list[float]] = {"small": [], "large": []}
    for scene in scenes(400, held_out=False, seed=5):
        for group, objs in zip(scene.groups, scene.objects, strict=True):
            for obj in objs:
                mask = _object_pixels(group, obj, side)
                ys, xs = np.nonzero(mask)
                cx, cy = (xs.mean() + 0.5) / side, (ys.mean() + 0.5) / side  # pixel centres
                assert region_of(cx, cy) == group.region, (group, obj, cx, cy)
                lo, hi = SIZES[group.size]
                assert lo <= obj.radius <= hi
                extents[group.size].append(max(np.ptp(xs), np.ptp(ys)) + 1)  # rendered bounding box, pixels
    assert max(extents["small"]) < min(extents["large"]), "size classes overlap once rendered"


def test_size_classes_stay_apart_at_the_training_resolution():
    """At 32 x 32 (the demo configs' images) the covered area (anti-aliased coverage summed) of every small
    object is below that of every large object of the same shape."""
    side, background = 32, np.array(BACKGROUNDS["charcoal"][0], dtype=np.float64)
    areas: dict[tuple[str, str], list[float]] = {}
    for scene in scenes(600, held_out=False, seed=8):
        for group, objs in zip(scene.groups, scene.objects, strict=True):
            colour = np.array(COLOURS[group.colour], dtype=np.float64) - background
            for obj in objs:
                alone = SceneSpec((group,), ((obj,),), "charcoal")
                pixels = np.asarray(render_image(alone, side), dtype=np.float64) - background  # (H, W, 3)
                coverage = pixels @ colour / (colour @ colour)  # (H, W): 1 inside, between at edges
                areas.setdefault((group.shape, group.size), []).append(float(coverage.sum()))
    for shape in procedural.SHAPES:
        assert max(areas[shape, "small"]) * 1.15 < min(areas[shape, "large"]), shape


def test_region_margin_keeps_centres_off_the_borders():
    for scene in scenes(2000, held_out=False, seed=6):
        for group, objs in zip(scene.groups, scene.objects, strict=True):
            for obj in objs:
                assert region_of(obj.x, obj.y, procedural.REGION_MARGIN) == group.region


def test_palette_is_bright_distinct_and_backgrounds_are_dark():
    def luma(rgb):
        return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]

    assert min(math.dist(a, b) for a, b in itertools.combinations(COLOURS.values(), 2)) >= 90
    darkest_colour = min(luma(c) for c in COLOURS.values())
    for name in BACKGROUNDS:
        pixels = np.asarray(procedural._background(name, 32), dtype=np.float64)  # (H, W, 3)
        assert luma(pixels.reshape(-1, 3).max(axis=0)) + 40 < darkest_colour, name


def test_render_is_deterministic_png_of_the_asked_size():
    scene = scenes(1, held_out=False, seed=7)[0]
    assert render(scene, 32) == render(scene, 32)
    assert render_image(scene, 48).size == (48, 48)
    assert render(scene, 32)[:8] == b"\x89PNG\r\n\x1a\n"
