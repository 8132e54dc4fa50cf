"""The two demo worlds seen through one interface: vocabulary, scenes as groups, renders, captions, parser.

A scene is described by its *groups* (``world.procedural.Group``: shape, colour, size, count, region),
at most one per region. The fixed world (``world/scenes.py``) has one group per scene; the procedural
world (``world/procedural.py``) 1-3. Both worlds' captions are read by one parser
(``world.captions.parse_caption``): the fixed world's four templates, its words and region phrases are a
subset of the procedural language, so the fixed world checks only that what it reads is in its own
vocabulary.

``EvalItem`` is one evaluation prompt: a caption, the groups it names (the truth), a few more captions of
the same scene (references for BLEU) and the real render. ``eval_items`` draws them deterministically from
(world, split, seed): ``seen`` scenes avoid the held-out colour/shape pairs, ``heldout`` scenes show one.

``training_example`` draws what the faithfulness scorer learns from: scenes of the world plus empty
pictures and, in the fixed world, two groups in opposite regions (a generated picture may show more
than its caption asks for; the scorer must see that).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from mot_lightning.world import captions, procedural, scenes
from mot_lightning.world.procedural import Group

REGIONS = procedural.REGIONS  # both worlds: left, right, top, bottom, middle
SIZES = ("small", "large")
COUNTS = (1, 2, 3)
SPLITS = ("seen", "heldout")  # eval prompts: training distribution / held-out colour-shape pairs
N_REFERENCES = 4  # captions per eval scene (BLEU references)
_OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}


@dataclass(frozen=True)
class EvalItem:
    """One evaluation prompt: ``caption`` names ``groups``; ``image`` float[3, R, R] in [0, 1] is its render."""

    caption: str
    groups: tuple[Group, ...]
    references: tuple[str, ...]  # captions of the same scene (``caption`` first)
    image: torch.Tensor
    split: str


class World:
    """A demo world's vocabulary and how to draw, render, caption and parse its scenes."""

    name: str
    colours: tuple[str, ...]
    shapes: tuple[str, ...]
    held_out: frozenset[tuple[str, str]]
    scorer_steps: int  # the faithfulness scorer's default fit length (optimizer steps of 128 renders)

    def scene(self, rng: random.Random, held_out: bool):
        raise NotImplementedError

    def groups(self, scene) -> tuple[Group, ...]:
        raise NotImplementedError

    def render(self, scene, size: int) -> Image.Image:
        raise NotImplementedError

    def caption(self, scene, rng: random.Random) -> str:
        raise NotImplementedError

    def training_example(self, rng: random.Random, size: int) -> tuple[Image.Image, tuple[Group, ...]]:
        raise NotImplementedError

    def parse(self, text: str, strict: bool = False) -> list[Group]:
        """The groups a caption names; not strict (generated captions): what can be read, the rest skipped.
        Groups outside this world's vocabulary are kept (they can never match a picture of it)."""
        return captions.parse_caption(text, strict=strict)

    def empty(self, size: int) -> Image.Image:
        return Image.new("RGB", (size, size), scenes.BACKGROUND)


class FixedWorld(World):
    """``world/scenes.py``: one group per scene at fixed positions."""

    name = "fixed"
    scorer_steps = 1000  # 720 distinct scenes at fixed places
    colours = tuple(scenes.COLOURS)
    shapes = scenes.SHAPES
    held_out = scenes.HELD_OUT

    def scene(self, rng: random.Random, held_out: bool) -> scenes.Scene:
        return scenes.random_scene(rng, held_out)

    def groups(self, scene: scenes.Scene) -> tuple[Group, ...]:
        return (Group(scene.shape, scene.colour, scene.size, scene.count, scene.region),)

    def render(self, scene: scenes.Scene, size: int) -> Image.Image:
        return scenes.render_image(scene, size)

    def caption(self, scene: scenes.Scene, rng: random.Random) -> str:
        return scene.caption(rng)

    def training_example(self, rng: random.Random, size: int) -> tuple[Image.Image, tuple[Group, ...]]:
        """Empty (5%), one scene (80%) or two scenes in opposite regions (15%; they never overlap)."""
        roll = rng.random()
        if roll < 0.05:
            return self.empty(size), ()
        first = self.scene(rng, held_out=rng.random() < 0.2)
        image = self.render(first, size)
        if roll < 0.85 or first.region == "middle":
            return image, self.groups(first)
        second = scenes.Scene(rng.choice(self.shapes), rng.choice(self.colours), rng.choice(SIZES),
                              _OPPOSITE[first.region], rng.randint(1, 3))
        other = np.asarray(self.render(second, size))
        mask = (other != np.asarray(scenes.BACKGROUND, np.uint8)).any(-1, keepdims=True)  # (R, R, 1)
        merged = np.where(mask, other, np.asarray(image))
        return Image.fromarray(merged), self.groups(first) + self.groups(second)


class ProceduralWorld(World):
    """``world/procedural.py``: 1-3 groups in distinct regions, continuous positions and sizes."""

    name = "procedural"
    scorer_steps = 3000  # shapes 4-8 px wide anywhere in their region: longer to learn
    colours = tuple(procedural.COLOURS)
    shapes = procedural.SHAPES
    held_out = procedural.HELD_OUT

    def scene(self, rng: random.Random, held_out: bool) -> procedural.SceneSpec:
        return procedural.random_scene(rng, held_out)

    def groups(self, scene: procedural.SceneSpec) -> tuple[Group, ...]:
        return scene.groups

    def render(self, scene: procedural.SceneSpec, size: int) -> Image.Image:
        return procedural.render_image(scene, size)

    def caption(self, scene: procedural.SceneSpec, rng: random.Random) -> str:
        return captions.caption(scene, rng)

    def training_example(self, rng: random.Random, size: int) -> tuple[Image.Image, tuple[Group, ...]]:
        """Empty (5%, on one of the backgrounds) or a scene of either split."""
        if rng.random() < 0.05:
            empty = procedural.SceneSpec((), (), rng.choice(list(procedural.BACKGROUNDS)))
            return self.render(empty, size), ()
        scene = self.scene(rng, held_out=rng.random() < 0.2)
        return self.render(scene, size), scene.groups


WORLDS: dict[str, World] = {"fixed": FixedWorld(), "procedural": ProceduralWorld()}


def get_world(name: str) -> World:
    if name not in WORLDS:
        raise ValueError(f"unknown demo world {name!r}: use one of {sorted(WORLDS)} (data.demo.mode)")
    return WORLDS[name]


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> float[3, R, R] in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def eval_items(world: World, n: int, split: str, size: int, seed: int = 0) -> list[EvalItem]:
    """``n`` evaluation prompts of ``split`` (``seen`` / ``heldout``), the same for the same arguments."""
    if split not in SPLITS:
        raise ValueError(f"eval split {split!r}: use one of {SPLITS}")
    rng = random.Random(f"mot_lightning eval:{world.name}:{split}:{seed}")
    items = []
    for _ in range(n):
        scene = world.scene(rng, held_out=split == "heldout")
        refs = tuple(world.caption(scene, rng) for _ in range(N_REFERENCES))
        items.append(EvalItem(refs[0], world.groups(scene), refs, to_tensor(world.render(scene, size)), split))
    return items
