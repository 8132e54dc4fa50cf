"""The demo world as the generation metrics read it: vocabulary, scenes as groups, renders, captions, parser.

There is one demo world (``world/procedural.py``): both ``data.demo`` modes draw their documents from it,
the fixed mode a finite sample, the procedural mode an endless stream. A scene is described by its *groups*
(``world.procedural.Group``: shape, colour, size, count, region), 1-3 of them, at most one per region; its
captions are read back by ``world.captions.parse_caption``.

``EvalItem`` is one evaluation prompt: a caption, the groups it names (the truth), a few more captions of
the same scene (references for BLEU) and the real render. ``eval_items`` draws them deterministically from
(world, split, seed): ``seen`` scenes avoid the held-out colour/shape pairs, ``heldout`` scenes show one.

``training_example`` draws what the faithfulness scorer learns from: scenes of both splits plus empty
pictures (a generated picture may show more or fewer groups than its caption asks for; the scorer must
see every count of groups, none included).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from mot_lightning.world import captions, procedural
from mot_lightning.world.procedural import Group, SceneSpec

SPLITS = ("seen", "heldout")  # eval prompts: training distribution / held-out colour-shape pairs
N_REFERENCES = 4  # captions per eval scene (BLEU references)


@dataclass(frozen=True)
class EvalItem:
    """One evaluation prompt: ``caption`` names ``groups``; ``image`` float[3, R, R] in [0, 1] is its render."""

    caption: str
    groups: tuple[Group, ...]
    references: tuple[str, ...]  # captions of the same scene (``caption`` first)
    image: torch.Tensor
    split: str


class World:
    """The demo world's vocabulary and how to draw, render, caption and parse its scenes.

    ``name`` keys the scorer files and reports (``scorer-procedural-<side>px-<hash>.pt``, ``"world"``)."""

    name = "procedural"
    scorer_steps = 3000  # the scorer's default fit length (optimizer steps of 128 renders): shapes 4-8 px wide
    colours = tuple(procedural.COLOURS)  # the vocabulary, in the scorer heads' class order
    shapes = procedural.SHAPES
    sizes = tuple(procedural.SIZES)
    counts = procedural.COUNTS
    regions = procedural.REGIONS
    held_out = procedural.HELD_OUT

    def scene(self, rng: random.Random, held_out: bool) -> SceneSpec:
        return procedural.random_scene(rng, held_out)

    def groups(self, scene: SceneSpec) -> tuple[Group, ...]:
        return scene.groups

    def render(self, scene: SceneSpec, size: int) -> Image.Image:
        return procedural.render_image(scene, size)

    def caption(self, scene: SceneSpec, rng: random.Random) -> str:
        return captions.caption(scene, rng)

    def parse(self, text: str, strict: bool = False) -> list[Group]:
        """The groups a caption names; not strict (generated captions): what can be read, the rest skipped."""
        return captions.parse_caption(text, strict=strict)

    def empty(self, size: int, background: str = "charcoal") -> Image.Image:
        """A picture of no group, on one of the world's backgrounds."""
        return self.render(SceneSpec((), (), background), size)

    def training_example(self, rng: random.Random, size: int) -> tuple[Image.Image, tuple[Group, ...]]:
        """Empty (5%, on one of the backgrounds) or a scene of either split (1-3 groups)."""
        if rng.random() < 0.05:
            return self.empty(size, rng.choice(list(procedural.BACKGROUNDS))), ()
        scene = self.scene(rng, held_out=rng.random() < 0.2)
        return self.render(scene, size), scene.groups


WORLD = World()


def get_world(name: str) -> World:
    """The demo world by the name a config, a report or a scorer file gives (``WORLD.name``)."""
    if name != WORLD.name:
        hint = (" (the fixed demo corpus is a sample of that world now; a scorer file of the retired fixed world "
                "must be fitted again)" if name == "fixed" else "")
        raise ValueError(f"unknown demo world {name!r}: the demo world is {WORLD.name!r}{hint}")
    return WORLD


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
