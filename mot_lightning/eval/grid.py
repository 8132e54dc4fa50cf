"""A PNG grid of generated pictures with their prompts and what the scorer found wrong."""
from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mot_lightning.eval.evaluate import Sample

CELL = 128  # pictures are scaled up to this side (nearest: the pixels stay visible)
TEXT_LINES = 5
LINE = 11  # pixels per text line (PIL's default bitmap font)
WRAP = 22  # characters per line
OK, BAD = (40, 120, 40), (170, 30, 30)
SHORT = {"colour": "col", "shape": "shape", "size": "size", "count": "count", "position": "pos", "extra": "extra"}


def save_grid(samples: Sequence[Sample], path: str | Path, columns: int = 8) -> Path:
    """One cell per sample: the picture, its caption and ``ok`` or ``miss: <attributes>`` (green / red)."""
    if not samples:
        raise ValueError("no samples to draw")
    rows = -(-len(samples) // columns)
    height = CELL + TEXT_LINES * LINE + 6
    sheet = Image.new("RGB", (columns * CELL, rows * height), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, s in enumerate(samples):
        x, y = (i % columns) * CELL, (i // columns) * height
        pixels = (s.image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        sheet.paste(Image.fromarray(pixels).resize((CELL, CELL), Image.NEAREST), (x, y))
        caption = textwrap.wrap(("[held-out] " if s.split == "heldout" else "") + s.caption, WRAP)[:3]
        verdict = textwrap.wrap("ok" if not s.misses else "miss: " + " ".join(SHORT.get(m, m) for m in s.misses), WRAP)
        colours = ["black"] * len(caption) + [OK if not s.misses else BAD] * len(verdict)
        for k, (line, colour) in enumerate(zip(caption + verdict, colours)):
            draw.text((x + 2, y + CELL + 2 + k * LINE), line, fill=colour, font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
