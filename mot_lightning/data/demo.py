"""The demo corpus: the demo world (``mot_lightning/world``) written in every shard layout.

From scenes (``world/scenes.py``) and spoken captions (``world/speech.py``) the
generator writes (``docs/demo_data.md`` shows the files):

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

The procedural mode (``data.demo.mode: procedural``, ``ProceduralConfig``) trains on
an endless stream of virtual shards of the procedural world (``world/virtual.py``:
``world://train/<kind>/<index>?...`` URLs, generated when read) and writes only
what must stay fixed, under ``<data.demo.dir>/procedural/``:

- ``val_seen/mixed-*.tar``     documents of the training distribution (own seed);
- ``val_heldout/mixed-*.tar``  documents whose scenes show a held-out colour/shape pair;
- ``fit/<kind>-*.tar``         the first virtual training shards, written out for
  fitting tokenizers on (the tokenizer fitter reads files).

Both modes' configs answer the same four questions for the data module:
``prepare()``, ``train_sources()``, ``val_sets()``, ``fit_data()``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import asdict, dataclass

import webdataset as wds

from mot_lightning.data.locks import unique_temp
from mot_lightning.data.sources import SourceConfig
from mot_lightning.world import speech, virtual
from mot_lightning.world.scenes import Scene, description, random_scene, render

log = logging.getLogger("mot_lightning.data")
TRAIN_KINDS = virtual.KINDS  # one table of kind weights for both modes
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

    def prepare(self) -> None:
        """Generate the corpus unless ``out`` holds a complete one."""
        if not is_complete(self.out):
            generate(self)

    def train_sources(self) -> list[SourceConfig]:
        return default_sources(self.out)

    def val_sets(self) -> list[SourceConfig]:
        return default_val_sets(self.out)

    def fit_data(self) -> str:
        return os.path.join(self.out, "train")


# --- documents ----------------------------------------------------------------
class _Maker:
    """Builds one sample dict per call; all randomness from one seeded ``random.Random``."""

    def __init__(self, cfg: DemoConfig, rng: random.Random, held_out: bool) -> None:
        self.cfg, self.rng, self.held_out = cfg, rng, held_out

    def scene(self) -> Scene:
        return random_scene(self.rng, self.held_out)

    def speak(self, text: str) -> bytes:
        wave = speech.espeak(text) if self.cfg.speech == "espeak" else speech.synthesize(text)
        return speech.wav_bytes(wave)

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
        return {"__key__": key, "txt": _utf8(description(self.rng, self.held_out))}

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
    tmp = str(unique_temp(cfg.out.rstrip("/"), ".partial"))  # per process: nodes never share it
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
    # one line per split and kind: the progress of prepare_data and `mot data demo`
    log.info("demo corpus: wrote %s/%s: %d documents in %d shards", split, prefix, len(samples), shards)
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


# --- procedural mode ------------------------------------------------------------
PROCEDURAL_DIR = "procedural"  # the procedural mode's files, below data.demo.dir


@dataclass
class ProceduralConfig:
    """The procedural demo: virtual training shards, fixed validation and tokenizer-fitting shards."""

    out: str = "data/demo/procedural"
    seed: int = 0
    image_size: int = 32  # rendered side in pixels (the data module renders at its own image size)
    fit_docs: int = 4000  # written to fit/ for tokenizer fitting, split over the kinds by TRAIN_KINDS
    val_docs: int = 512  # per validation set (benchmarks/README.md: how its standard error shrinks)
    shard_docs: int = 50  # documents per virtual shard (and per written shard)
    virtual_shards: int = 100_000  # virtual training shards per kind: 5M documents each, never written

    def written(self) -> dict:
        """What the files on disk depend on (the manifest records it; a change rewrites them)."""
        return {k: v for k, v in asdict(self).items() if k not in ("out", "virtual_shards")}

    def prepare(self) -> None:
        """Write the fixed files unless ``out`` holds them for this config."""
        path = os.path.join(self.out, "manifest.json")
        if os.path.isfile(path):
            with open(path) as fh:
                if json.load(fh).get("config") == self.written():
                    return
        generate_procedural(self)

    def train_sources(self) -> list[SourceConfig]:
        """One source of ``virtual_shards`` virtual shards per kind, weighted as the fixed corpus."""
        return [SourceConfig(kind, virtual.shard_pattern("train", kind, self.virtual_shards, self.seed,
                                                         self.shard_docs, self.image_size), weight=weight)
                for kind, weight in TRAIN_KINDS.items()]

    def val_sets(self) -> list[SourceConfig]:
        if not os.path.isfile(os.path.join(self.out, "manifest.json")):
            raise FileNotFoundError(f"no procedural demo files at {self.out!r} (missing manifest.json): "
                                    "the data module's prepare_data() writes them (`mot fit` calls it)")
        return default_val_sets(self.out)

    def fit_data(self) -> str:
        return os.path.join(self.out, "fit")


def generate_procedural(cfg: ProceduralConfig) -> dict:
    """Write ``fit/``, ``val_seen/``, ``val_heldout/`` and ``manifest.json`` (last) into ``cfg.out``.

    The validation sets are the virtual shards ``world://val_seen/mixed/<i>`` and
    ``world://val_heldout/mixed/<i>`` (own splits, so own random streams) cut to ``val_docs``; ``fit/``
    holds the first virtual training shards of each kind. Built in a sibling temp folder and moved in.
    """
    tmp = str(unique_temp(cfg.out.rstrip("/"), ".partial"))  # per process: nodes never share it
    shutil.rmtree(tmp, ignore_errors=True)
    manifest = {"generator": virtual.GENERATOR, "mode": "procedural", "config": cfg.written(), "fit": {},
                "val": {}}
    for kind, share in TRAIN_KINDS.items():
        docs = max(1, round(cfg.fit_docs * share))
        samples = _virtual_docs(cfg, "train", kind, docs)
        manifest["fit"][kind] = _write(tmp, "fit", kind, samples, cfg.shard_docs)
    for name in VAL_SETS:
        docs = _virtual_docs(cfg, name, virtual.MIXED, cfg.val_docs)
        manifest["val"][name] = _write(tmp, name, virtual.MIXED, docs, cfg.shard_docs)
    with open(os.path.join(tmp, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1)
    _move_in(tmp, cfg.out, ["fit", *VAL_SETS, "manifest.json"])
    return manifest


def _virtual_docs(cfg: ProceduralConfig, split: str, kind: str, docs: int) -> list[dict]:
    """The first ``docs`` documents of virtual shards ``0, 1, ...`` of ``split``/``kind``."""
    out: list[dict] = []
    for index in range(-(-docs // cfg.shard_docs)):
        shard = virtual.VirtualShard(split, kind, index, cfg.seed, cfg.shard_docs, cfg.image_size)
        out += virtual.samples(shard)
    return out[:docs]


def _manifest(out: str) -> dict:
    path = os.path.join(out, "manifest.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no demo corpus at {out!r} (missing manifest.json); run `mot data demo --out {out}`"
        )
    with open(path) as fh:
        return json.load(fh)
