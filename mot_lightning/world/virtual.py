"""Virtual shards of the procedural world: a URL names a shard; its samples are generated when read.

    world://<split>/<kind>/<index>?seed=<seed>&docs=<docs>&size=<image size>

names ``docs`` documents generated from ``(seed, split, kind, index)`` alone, so the same URL always
gives the same bytes, in the raw-sample form a tar shard gives (``{"__key__": ..., "png": bytes,
"txt": bytes, ...}``) and in the layouts of the demo corpus' tar shards (``data/demo.py`` writes the first
documents of these shards as its fixed corpus):

- ``image_caption``   ``png`` + ``txt`` pairs (img2dataset layout), scenes of 1-3 groups;
- ``speech_caption``  ``wav`` + ``txt`` pairs: a spoken caption and its transcript;
- ``interleaved``     ``json`` segments + media members: caption->image, image->caption,
  image->question/answer, text->speech, text->image->speech, two-scene stories;
- ``text``            a caption and one or two questions with answers (one for three groups);
- ``mixed``           each document of one of the four above, drawn with the ``KINDS`` weights
  (validation sets).

Splits: ``train`` and ``val_seen`` draw scenes without the held-out colour/shape pairs, ``val_heldout``
scenes that show at least one (``procedural.HELD_OUT``). A brace pattern over the index
(``shard_pattern``) lists a source of as many virtual shards as wanted; the data layer's stream splits,
shuffles and resumes them like tar shards.

Documents that carry speech describe one group only: a spoken caption of two groups takes 230-300
tokens at 25 speech units/s, more than the demo configs' rows of 256. Two-scene stories show one group
per scene, in the short frames, for the same reason.

Layering: this module is part of ``world/`` and imports nothing else from ``mot_lightning``;
``shards/reader.py`` imports it to read ``world://`` URLs (the one place the shard layer knows the world).
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from mot_lightning.world import speech
from mot_lightning.world.captions import caption, question
from mot_lightning.world.procedural import SceneSpec, random_scene, render

SCHEME = "world"
SPLITS = {"train": False, "val_seen": False, "val_heldout": True}  # split -> scenes show a held-out pair
# kinds of training shard and their weights (both demo modes' training sources)
KINDS = {"image_caption": 0.3, "speech_caption": 0.2, "interleaved": 0.35, "text": 0.15}
MIXED = "mixed"
GENERATOR = "mot_lightning world v2"  # part of every shard's seed: a changed generator is another world
VOICES = ("builtin", "espeak")  # who speaks the spoken captions (``samples``)
SPEECH_GROUPS = 1  # groups in a scene that is spoken (module doc)
_STORY_FRAMES = ("{}.", "there {verb} {}.")  # the short frames: two captions and images fit in 256 tokens


@dataclass(frozen=True)
class VirtualShard:
    """The address of one virtual shard (``url`` / ``parse`` convert to and from its URL)."""

    split: str
    kind: str
    index: int
    seed: int = 0
    docs: int = 50
    size: int = 32  # rendered image side in pixels

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"world shard split {self.split!r}: use one of {sorted(SPLITS)}")
        if self.kind not in (*KINDS, MIXED):
            raise ValueError(f"world shard kind {self.kind!r}: use one of {[*KINDS, MIXED]}")
        if self.index < 0 or self.docs < 1 or self.size < 8:
            raise ValueError(f"world shard needs index >= 0, docs >= 1 and size >= 8, got {self}")

    @property
    def url(self) -> str:
        return f"{SCHEME}://{self.split}/{self.kind}/{self.index:06d}?{self._query()}"

    def _query(self) -> str:
        return f"seed={self.seed}&docs={self.docs}&size={self.size}"

    @classmethod
    def parse(cls, url: str) -> VirtualShard:
        """The shard of ``world://<split>/<kind>/<index>?seed=&docs=&size=`` (query keys optional)."""
        parts = urlsplit(url)
        path = parts.path.strip("/").split("/")
        if parts.scheme != SCHEME or len(path) != 2 or not path[1].isdigit():
            raise ValueError(f"{url!r} is not a world shard URL: expected "
                             f"{SCHEME}://<split>/<kind>/<index>?seed=<s>&docs=<n>&size=<px>")
        query = parse_qs(parts.query)
        unknown = set(query) - {"seed", "docs", "size"}
        if unknown:
            raise ValueError(f"{url!r}: unknown query keys {sorted(unknown)}; use seed, docs and size")
        numbers = {k: int(v[-1]) for k, v in query.items()}
        return cls(parts.netloc, path[0], int(path[1]), **numbers)


def shard_pattern(split: str, kind: str, shards: int, seed: int = 0, docs: int = 50, size: int = 32) -> str:
    """A brace pattern naming virtual shards ``0..shards-1`` (``shards/urls.py`` expands it)."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    first = VirtualShard(split, kind, 0, seed, docs, size)
    return f"{SCHEME}://{split}/{kind}/{{000000..{shards - 1:06d}}}?{first._query()}"


def samples(shard: VirtualShard | str, voice: str = "builtin") -> Iterator[dict]:
    """The raw samples of a virtual shard (generated one by one; the same shard gives the same bytes).

    ``voice``: who speaks the spoken captions, ``"builtin"`` (the deterministic synthesizer; what
    ``world://`` URLs read) or ``"espeak"`` (espeak-ng, when installed; ``mot data demo --speech``)."""
    if voice not in VOICES:
        raise ValueError(f"voice must be one of {VOICES}, got {voice!r}")
    shard = VirtualShard.parse(shard) if isinstance(shard, str) else shard
    rng = random.Random(f"{GENERATOR}:{shard.seed}:{shard.split}:{shard.kind}:{shard.index}")
    maker = _Documents(rng, SPLITS[shard.split], shard.size, voice)
    kinds, weights = list(KINDS), list(KINDS.values())
    for k in range(shard.docs):
        kind = rng.choices(kinds, weights)[0] if shard.kind == MIXED else shard.kind
        key = f"{shard.split}-{kind}-{shard.index:06d}-{k:04d}"  # no dots: the key ends at the first one
        yield getattr(maker, kind)(key)


def documents(split: str, kind: str, n: int, seed: int = 0, docs: int = 50, size: int = 32,
              voice: str = "builtin") -> Iterator[dict]:
    """The first ``n`` documents of virtual shards ``0, 1, ...`` of ``split``/``kind`` (``docs`` per shard):
    the start of the stream a source of those shards reads, as the demo corpus writer stores it."""
    for index in range(-(-n // docs)):
        yield from itertools.islice(samples(VirtualShard(split, kind, index, seed, docs, size), voice),
                                    min(docs, n - index * docs))


class _Documents:
    """Builds one sample dict per call; all randomness from one seeded ``random.Random``."""

    def __init__(self, rng: random.Random, held_out: bool, size: int, voice: str = "builtin") -> None:
        self.rng, self.held_out, self.size = rng, held_out, size
        self.say = speech.espeak if voice == "espeak" else speech.synthesize

    def scene(self, max_groups: int = 3) -> SceneSpec:
        return random_scene(self.rng, self.held_out, max_groups)

    def _speak(self, text: str) -> bytes:
        return speech.wav_bytes(self.say(text))

    def image_caption(self, key: str) -> dict:
        scene = self.scene()
        return {"__key__": key, "png": render(scene, self.size), "txt": _utf8(caption(scene, self.rng))}

    def speech_caption(self, key: str) -> dict:
        text = caption(self.scene(SPEECH_GROUPS), self.rng)
        return {"__key__": key, "wav": self._speak(text), "txt": _utf8(text)}

    def text(self, key: str) -> dict:
        scene = self.scene()
        asked = 1 if len(scene.groups) == 3 else self.rng.randint(1, 2)  # stays within 256 bytes
        questions = [question(scene, self.rng) for _ in range(asked)]
        lines = [caption(scene, self.rng), *questions]
        return {"__key__": key, "txt": _utf8(" ".join(lines))}

    def interleaved(self, key: str) -> dict:
        make = self.rng.choice(_INTERLEAVED)
        files: dict[str, bytes] = {}
        segments = make(self, files)
        return {"__key__": key, "json": _utf8(json.dumps({"segments": segments})), **files}

    # --- interleaved documents: each returns its segments and fills ``files`` ---------------------------
    def _caption_image(self, files: dict) -> list[dict]:
        scene = self.scene()
        return [_text(caption(scene, self.rng)), _file(files, "img0.png", render(scene, self.size), "image")]

    def _image_caption(self, files: dict) -> list[dict]:
        scene = self.scene()
        return [_file(files, "img0.png", render(scene, self.size), "image"),
                _text("caption: " + caption(scene, self.rng))]

    def _image_question(self, files: dict) -> list[dict]:
        scene = self.scene()
        return [_file(files, "img0.png", render(scene, self.size), "image"), _text(question(scene, self.rng))]

    def _text_speech(self, files: dict) -> list[dict]:
        text = caption(self.scene(SPEECH_GROUPS), self.rng)
        return [_text(text), _file(files, "aud0.wav", self._speak(text), "speech")]

    def _all_three(self, files: dict) -> list[dict]:
        scene = self.scene(SPEECH_GROUPS)
        text = caption(scene, self.rng)
        return [_text(text), _file(files, "img0.png", render(scene, self.size), "image"),
                _file(files, "aud0.wav", self._speak(text), "speech")]

    def _story(self, files: dict) -> list[dict]:
        first, then = self.scene(1), self.scene(1)
        return [_text("first, " + caption(first, self.rng, _STORY_FRAMES)),
                _file(files, "img0.png", render(first, self.size), "image"),
                _text("then, " + caption(then, self.rng, _STORY_FRAMES)),
                _file(files, "img1.png", render(then, self.size), "image")]


_INTERLEAVED: tuple[Callable[[_Documents, dict], list[dict]], ...] = (
    _Documents._caption_image, _Documents._image_caption, _Documents._image_question,
    _Documents._text_speech, _Documents._all_three, _Documents._story,
)


def _text(text: str) -> dict:
    return {"modality": "text", "text": text}


def _file(files: dict, name: str, data: bytes, modality: str) -> dict:
    files[name] = data
    return {"modality": modality, "file": name}


def _utf8(text: str) -> bytes:
    return text.encode("utf-8")
