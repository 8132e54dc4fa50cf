"""The demo corpus: a small deterministic world of coloured shapes, in every shard layout.

A *scene* is ``count`` (1-3) shapes of one kind, colour and size in one region
of the picture. From scenes the generator writes (``data/README.md`` shows the
files):

- ``train/image_caption-*.tar``  image-caption pairs (img2dataset layout);
- ``train/speech_caption-*.tar`` spoken caption + transcript pairs;
- ``train/interleaved-*.tar``    caption->image, image->caption, text+speech,
  text+image+speech and two-scene stories (interleaved JSON layout);
- ``train/text-*.tar``           text-only descriptions and questions/answers;
- ``val_seen/*.tar``             held-out documents of the training distribution;
- ``val_heldout/*.tar``          documents about colour/shape combinations that
  never occur in training (a compositional-generalisation split).

Same config -> byte-identical shards (tar mtimes are fixed). ``manifest.json``
is written last; its presence marks a complete corpus.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
from dataclasses import asdict, dataclass

import webdataset as wds
from PIL import Image, ImageDraw

from mot_lightning.data import synth
from mot_lightning.data.sources import SourceConfig

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
TRAIN_KINDS = {"image_caption": 0.3, "speech_caption": 0.2, "interleaved": 0.35, "text": 0.15}
VAL_SETS = ("val_seen", "val_heldout")
GENERATOR = "mot_lightning demo v1"


@dataclass
class DemoConfig:
    out: str = "data/demo"
    seed: int = 0
    image_size: int = 32  # rendered side in pixels (the loader resizes to its own image_size)
    # 4000 training documents: enough that a CPU-sized model does not just memorise them (at 400 it did)
    train_docs: int = 4000  # split over the four training sources by TRAIN_KINDS
    val_docs: int = 96  # per validation set
    shard_size: int = 50  # samples per shard (>= 4 shards per source lets 2 ranks x 2 workers split by shard)
    speech: str = "builtin"  # "builtin" synthesizer or "espeak" (needs espeak-ng installed)


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    size: str
    region: str
    count: int

    def caption(self, rng: random.Random) -> str:
        noun = self.shape + ("s" if self.count > 1 else "")
        where = (
            "in the middle"
            if self.region == "middle"
            else (f"at the {self.region}" if self.region in ("top", "bottom") else f"on the {self.region}")
        )
        phrase = f"{COUNTS[self.count - 1]} {self.size} {self.colour} {noun} {where}"
        template = rng.choice(("{}.", "a picture of {}.", "there {} {}.", "this image shows {}."))
        if template.startswith("there"):
            return template.format("is" if self.count == 1 else "are", phrase)
        return template.format(phrase)


def random_scene(rng: random.Random, held_out: bool) -> Scene:
    while True:
        shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
        if ((colour, shape) in HELD_OUT) == held_out:
            return Scene(shape, colour, rng.choice(list(SIZES)), rng.choice(list(REGIONS)), rng.randint(1, 3))


def render(scene: Scene, size: int) -> bytes:
    """PNG bytes of the scene (``size x size`` RGB)."""
    img = Image.new("RGB", (size, size), (24, 24, 28))
    draw = ImageDraw.Draw(img)
    cx, cy = REGIONS[scene.region]
    radius = SIZES[scene.size] * size * (1.0, 0.8, 0.6)[scene.count - 1]  # keep objects apart
    spread = [0.0] if scene.count == 1 else [-0.2, 0.2] if scene.count == 2 else [-0.3, 0.0, 0.3]
    vertical = scene.region in ("left", "right")  # objects line up along the free axis
    for offset in spread:
        x = (cx + (0 if vertical else offset)) * size
        y = (cy + (offset if vertical else 0)) * size
        _draw_shape(draw, scene.shape, x, y, radius, COLOURS[scene.colour])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
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


# --- documents ----------------------------------------------------------------
class _Maker:
    """Builds one sample dict per call; all randomness from one seeded ``random.Random``."""

    def __init__(self, cfg: DemoConfig, rng: random.Random, held_out: bool) -> None:
        self.cfg, self.rng, self.held_out = cfg, rng, held_out

    def scene(self) -> Scene:
        return random_scene(self.rng, self.held_out)

    def speak(self, text: str) -> bytes:
        wave = synth.espeak(text) if self.cfg.speech == "espeak" else synth.synthesize(text)
        return synth.wav_bytes(wave)

    def image_caption(self, key: str) -> dict:
        scene = self.scene()
        return {
            "__key__": key,
            "png": render(scene, self.cfg.image_size),
            "txt": _utf8(scene.caption(self.rng)),
        }

    def speech_caption(self, key: str) -> dict:
        caption = self.scene().caption(self.rng)
        return {"__key__": key, "wav": self.speak(caption), "txt": _utf8(caption)}

    def text(self, key: str) -> dict:
        scenes = [self.scene() for _ in range(self.rng.randint(1, 3))]
        lines = [s.caption(self.rng) for s in scenes]
        s = self.rng.choice(scenes)
        noun = s.shape + ("s" if s.count > 1 else "")
        lines.append(
            f"question: what colour {'is' if s.count == 1 else 'are'} the {noun} "
            f"{'in the middle' if s.region == 'middle' else 'on the ' + s.region}? answer: {s.colour}."
        )
        return {"__key__": key, "txt": _utf8(" ".join(lines))}

    def interleaved(self, key: str) -> dict:
        kind = self.rng.choice(("caption_image", "image_caption", "text_speech", "all_three", "story"))
        scene = self.scene()
        caption, png = scene.caption(self.rng), render(scene, self.cfg.image_size)
        files: dict[str, bytes] = {}
        if kind == "caption_image":
            segs = [_t(caption), _f(files, "img0.png", png, "image")]
        elif kind == "image_caption":
            segs = [_f(files, "img0.png", png, "image"), _t("caption: " + caption)]
        elif kind == "text_speech":
            segs = [_t(caption), _f(files, "aud0.wav", self.speak(caption), "speech")]
        elif kind == "all_three":
            segs = [
                _t(caption),
                _f(files, "img0.png", png, "image"),
                _f(files, "aud0.wav", self.speak(caption), "speech"),
            ]
        else:
            other = self.scene()
            segs = [
                _t("first, " + caption),
                _f(files, "img0.png", png, "image"),
                _t("then, " + other.caption(self.rng)),
                _f(files, "img1.png", render(other, self.cfg.image_size), "image"),
            ]
        return {"__key__": key, "json": _utf8(json.dumps({"segments": segs})), **files}


def _t(text: str) -> dict:
    return {"modality": "text", "text": text}


def _f(files: dict, name: str, data: bytes, modality: str) -> dict:
    files[name] = data
    return {"modality": modality, "file": name}


def _utf8(text: str) -> bytes:
    return text.encode("utf-8")


# --- writing ------------------------------------------------------------------
def generate(cfg: DemoConfig) -> dict:
    """Write the corpus into ``cfg.out``.

    Built in a sibling temp folder, then moved in entry by entry (``train/``,
    ``val_*/``, ``manifest.json`` last): other content of ``cfg.out`` (e.g. the
    tokenizer demo files in ``data/demo/tokenizers/``) is left alone.
    """
    if cfg.speech not in ("builtin", "espeak"):
        raise ValueError(f"speech must be 'builtin' or 'espeak', got {cfg.speech!r}")
    tmp = cfg.out.rstrip("/") + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    manifest = {"generator": GENERATOR, "config": asdict(cfg), "train": {}, "val": {}}
    for kind, share in TRAIN_KINDS.items():
        maker = _Maker(cfg, random.Random(f"{cfg.seed}-train-{kind}"), held_out=False)
        n = max(1, round(cfg.train_docs * share))
        samples = [getattr(maker, kind)(f"{kind}{k:06d}") for k in range(n)]
        manifest["train"][kind] = _write(tmp, "train", kind, samples, cfg.shard_size)
    for name in VAL_SETS:
        rng = random.Random(f"{cfg.seed}-{name}")
        maker = _Maker(cfg, rng, held_out=name == "val_heldout")
        kinds = rng.choices(list(TRAIN_KINDS), weights=list(TRAIN_KINDS.values()), k=cfg.val_docs)
        samples = [getattr(maker, kind)(f"{kind}{k:06d}") for k, kind in enumerate(kinds)]
        manifest["val"][name] = _write(tmp, name, "mixed", samples, cfg.shard_size)
    with open(os.path.join(tmp, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1)
    _move_in(tmp, cfg.out, ["train", *VAL_SETS, "manifest.json"])
    return manifest


def _move_in(tmp: str, out: str, entries: list[str]) -> None:
    os.makedirs(out, exist_ok=True)
    manifest = os.path.join(out, "manifest.json")
    if os.path.exists(manifest):
        os.remove(manifest)  # incomplete until the new one lands
    for entry in entries:
        target = os.path.join(out, entry)
        if os.path.isdir(target):
            shutil.rmtree(target)
        os.replace(os.path.join(tmp, entry), target)
    os.rmdir(tmp)


def _write(root: str, split: str, prefix: str, samples: list[dict], shard_size: int) -> dict:
    folder = os.path.join(root, split)
    os.makedirs(folder, exist_ok=True)
    with wds.ShardWriter(
        os.path.join(folder, f"{prefix}-%06d.tar"), maxcount=shard_size, verbose=0, mtime=0
    ) as sink:
        for sample in samples:
            sink.write(sample)
        shards = sink.shard
    return {
        "docs": len(samples),
        "shards": shards,
        "pattern": f"{split}/{prefix}-{{000000..{shards - 1:06d}}}.tar",
    }


def is_complete(out: str) -> bool:
    return os.path.isfile(os.path.join(out, "manifest.json"))


def default_sources(out: str = "data/demo") -> list[SourceConfig]:
    """The training sources of the demo corpus (what a YAML would list)."""
    manifest = _manifest(out)
    return [
        SourceConfig(kind, os.path.join(out, info["pattern"]), weight=TRAIN_KINDS[kind])
        for kind, info in manifest["train"].items()
    ]


def default_val_sets(out: str = "data/demo") -> list[SourceConfig]:
    manifest = _manifest(out)
    return [SourceConfig(name, os.path.join(out, info["pattern"])) for name, info in manifest["val"].items()]


def _manifest(out: str) -> dict:
    path = os.path.join(out, "manifest.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no demo corpus at {out!r} (missing manifest.json); run `mot data demo --out {out}`"
        )
    with open(path) as fh:
        return json.load(fh)
