"""Scenes of the demo world, their renders and their descriptions.

A *scene* is ``count`` (1-3) shapes of one kind, colour and size in one region
of the picture. ``render`` draws it on a dark background; ``Scene.caption``
describes it in one of four templates; ``Scene.question`` asks for its colour;
``description`` is a few captions and one question (a text document).
``HELD_OUT`` colour/shape pairs never occur in scenes drawn with
``held_out=False`` (a compositional-generalisation split).
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
}
SIZES = {"small": 0.12, "large": 0.2}  # radius as a fraction of the image side
REGIONS = {
    "left": (0.27, 0.5),
    "right": (0.73, 0.5),
    "top": (0.5, 0.27),
    "bottom": (0.5, 0.73),
    "middle": (0.5, 0.5),
}
COUNTS = ("one", "two", "three")
HELD_OUT = frozenset({("purple", "triangle"), ("orange", "circle"), ("green", "square")})
BACKGROUND = (24, 24, 28)


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    size: str
    region: str
    count: int

    @property
    def noun(self) -> str:
        return self.shape + ("s" if self.count > 1 else "")

    def caption(self, rng: random.Random) -> str:
        """One sentence naming count, size, colour, shape and place (template drawn from ``rng``)."""
        where = (
            "in the middle"
            if self.region == "middle"
            else (f"at the {self.region}" if self.region in ("top", "bottom") else f"on the {self.region}")
        )
        phrase = f"{COUNTS[self.count - 1]} {self.size} {self.colour} {self.noun} {where}"
        template = rng.choice(("{}.", "a picture of {}.", "there {} {}.", "this image shows {}."))
        if template.startswith("there"):
            return template.format("is" if self.count == 1 else "are", phrase)
        return template.format(phrase)

    def question(self) -> str:
        """A question about the scene's colour, with its answer."""
        where = "in the middle" if self.region == "middle" else "on the " + self.region
        verb = "is" if self.count == 1 else "are"
        return f"question: what colour {verb} the {self.noun} {where}? answer: {self.colour}."


def random_scene(rng: random.Random, held_out: bool) -> Scene:
    """A scene whose colour/shape pair is in ``HELD_OUT`` exactly when ``held_out``."""
    while True:
        shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
        if ((colour, shape) in HELD_OUT) == held_out:
            return Scene(shape, colour, rng.choice(list(SIZES)), rng.choice(list(REGIONS)), rng.randint(1, 3))


def description(rng: random.Random, held_out: bool) -> str:
    """Captions of 1-3 scenes, then a question about one of them (a text-only document)."""
    scenes = [random_scene(rng, held_out) for _ in range(rng.randint(1, 3))]
    lines = [s.caption(rng) for s in scenes]
    lines.append(rng.choice(scenes).question())
    return " ".join(lines)


def render_image(scene: Scene, size: int) -> Image.Image:
    """The scene as a ``size x size`` RGB image."""
    img = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    cx, cy = REGIONS[scene.region]
    radius = SIZES[scene.size] * size * (1.0, 0.8, 0.6)[scene.count - 1]  # keep objects apart
    spread = [0.0] if scene.count == 1 else [-0.2, 0.2] if scene.count == 2 else [-0.3, 0.0, 0.3]
    vertical = scene.region in ("left", "right")  # objects line up along the free axis
    for offset in spread:
        x = (cx + (0 if vertical else offset)) * size
        y = (cy + (offset if vertical else 0)) * size
        _draw_shape(draw, scene.shape, x, y, radius, COLOURS[scene.colour])
    return img


def render(scene: Scene, size: int) -> bytes:
    """PNG bytes of the scene (``size x size`` RGB)."""
    buf = io.BytesIO()
    render_image(scene, size).save(buf, format="PNG")
    return buf.getvalue()


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, r: float, fill) -> None:
    box = (x - r, y - r, x + r, y + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=fill)
    else:
        draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=fill)
