"""Raw WebDataset samples -> ``Document`` (a list of decoded segments).

Layouts (docs/demo_data.md, "Shard layouts"), tried in this order:

1. image-caption pair (img2dataset): ``<key>.{jpg,jpeg,png,webp}`` + ``<key>.txt``
   (a ``<key>.json`` next to them is img2dataset metadata and is ignored);
2. speech-transcript pair: ``<key>.{wav,flac}`` + ``<key>.txt``;
3. interleaved: ``<key>.json`` = ``{"segments": [...]}`` with files as ``<key>.<file>``;
4. plain text: ``<key>.txt``.

Pairs become two segments; their order (text first or media first) is chosen
per key by a hash, so a corpus trains both captioning and generation and the
choice is the same on every pass. Images are decoded with PIL (any mode to RGB by
``tokenizers.media.to_rgb``, the tokenizer fits' conversion; resized and centre-cropped to
``image_size``), audio with soundfile (mono, resampled
to 16 kHz with torchaudio). Nothing is unpickled. Problems raise
``BadSample(reason)`` with a reason from ``counters.SKIP_REASONS``.

Decoding is bounded (``DecodeLimits``): an image's size and a recording's length
are read from the file header first, so an image of more than ``max_pixels``
pixels (``image_too_large``) or audio longer than ``max_audio_seconds``
(``audio_too_long``) is skipped without being decoded; JPEGs are decoded at the
smallest DCT scale that still covers the target size (PIL's draft mode). Only
the errors each decoder raises for bad bytes are caught (PIL: ``OSError``
including ``UnidentifiedImageError``, ``SyntaxError``, ``ValueError``,
``DecompressionBombError``, ``struct.error``, ``EOFError``, ``zlib.error``;
soundfile: ``SoundFileError``/``RuntimeError``, ``ValueError``, ``TypeError``,
``EOFError``; json: ``JSONDecodeError``, ``RecursionError``); interrupts and
timeouts (``KeyboardInterrupt``, ``TimeoutError``, ``InterruptedError``) always
pass through.

Containment (``contained``): whatever else one document raises while it is read, decoded or
encoded (a tokenizer's ``UnicodeEncodeError``, a library bug on odd bytes) skips that document as
``bad_document`` with the exception named; only ``PROPAGATE`` leaves: interrupts, timeouts,
``MemoryError`` and ``SourceUnusable`` (the whole source cannot be used: tokenizers of other files, a
modality without a tokenizer), which stop the run with their own message. The loader and
``mot data inspect`` both go through it, so they report the same problems.
"""

from __future__ import annotations

import io
import json
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import soundfile
import torch
import torchaudio.functional
from PIL import Image, ImageOps

from mot_lightning.modality import Modality
from mot_lightning.shards.reader import Oversized
from mot_lightning.tokenizers.media import to_rgb

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
AUDIO_EXTS = ("wav", "flac")
SAMPLE_RATE = 16_000


# OSError subclasses that are not bad bytes: never turned into a skip
PASS_THROUGH = (TimeoutError, InterruptedError)
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError, struct.error, EOFError, zlib.error)
AUDIO_ERRORS = (soundfile.SoundFileError, RuntimeError, ValueError, TypeError, EOFError)


@dataclass(frozen=True)
class DecodeLimits:
    """Largest media decoded, and the most one document may cost (``data.loader`` keys of the same names).
    Bigger ones are skipped before decoding: from the file header (``image_too_large``, ``audio_too_long``),
    from the tar header (``member_too_large``: not even read), from the JSON (``too_many_members``), or from
    the headers summed over the document (``doc_too_large``). PIL itself refuses images of more than twice
    its ``Image.MAX_IMAGE_PIXELS`` (``DecompressionBombError``, also counted as ``image_too_large``)."""

    max_image_pixels: int = 8192 * 8192
    max_audio_seconds: float = 600.0
    max_member_bytes: int = 256 * 2**20  # one tar member (image, audio, text, JSON), checked before reading it
    max_doc_members: int = 64  # media files one interleaved document may name (decoded ones: kept modalities)
    max_doc_pixels: int = 2 * 8192 * 8192  # decoded pixels summed over one document's images
    max_doc_audio_seconds: float = 1800.0  # audio seconds summed over one document

    def __post_init__(self) -> None:
        if min(self.max_image_pixels, self.max_member_bytes, self.max_doc_members, self.max_doc_pixels) < 1 or \
                not (self.max_audio_seconds > 0 and self.max_doc_audio_seconds > 0):
            raise ValueError(f"data.loader.max_* limits must be >= 1 (seconds > 0), got {self}")


NO_LIMITS = DecodeLimits()


class BadSample(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class SourceUnusable(Exception):
    """No document of the source can be used (not a per-document skip): the run stops with this message."""


# what a document's failure never turns into a skip
PROPAGATE = (*PASS_THROUGH, MemoryError, SourceUnusable)
T = TypeVar("T")


def contained(key: str, work: Callable[[], T]) -> T:
    """``work()`` for one document: ``BadSample`` as raised, any other exception but ``PROPAGATE`` as
    ``BadSample("bad_document")`` naming it (so one odd document never stops a run)."""
    try:
        return work()
    except (BadSample, *PROPAGATE):
        raise
    except Exception as err:  # noqa: BLE001 - the containment boundary: one document, never the whole run
        raise BadSample("bad_document", f"{key}: {type(err).__name__}: {err}") from None


@dataclass
class Segment:
    modality: Modality
    value: str | torch.Tensor  # text str | image float[3, S, S] in [0, 1] | speech float[samples] at 16 kHz


@dataclass
class Document:
    key: str
    segments: list[Segment] = field(default_factory=list)
    dropped: int = 0  # segments removed by the modality filter


def parse_sample(sample: dict, keep: frozenset[Modality], image_size: int,
                 limits: DecodeLimits = NO_LIMITS) -> Document:
    """Decode one raw sample (``{"__key__": str, "<ext>": bytes, ...}``) keeping only ``keep`` modalities."""
    key = str(sample.get("__key__", "?"))
    oversized = {ext: v.size for ext, v in sample.items() if isinstance(v, Oversized)}
    if oversized:
        ext, size = next(iter(oversized.items()))
        raise BadSample("member_too_large", f"{key}.{ext}: {size:,} bytes > data.loader.max_member_bytes "
                        f"{limits.max_member_bytes:,} (not read)")
    image_ext = _first(sample, IMAGE_EXTS)
    audio_ext = _first(sample, AUDIO_EXTS)
    media = _MediaLoader(image_size, limits)
    if image_ext or audio_ext:
        media_ext = image_ext or audio_ext
        modality = Modality.IMAGE if image_ext else Modality.SPEECH
        return _pair(key, sample, media_ext, modality, keep, media)
    if "json" in sample:
        return _interleaved(key, sample, keep, media)
    if "txt" in sample:
        return _build(key, [(Modality.TEXT, lambda: _text(sample["txt"], key))], keep)
    members = sorted(k for k in sample if not k.startswith("__"))
    raise BadSample("unknown_layout", f"{key}: members {members} match no layout")


def _first(sample: dict, exts: tuple[str, ...]) -> str | None:
    return next((ext for ext in exts if ext in sample), None)


class _MediaLoader:
    """Decodes the media segments of one sample (image side and limits fixed), keeping the document's
    decoded pixels and audio seconds within ``max_doc_pixels`` / ``max_doc_audio_seconds`` (from headers)."""

    def __init__(self, image_size: int, limits: DecodeLimits) -> None:
        self.image_size, self.limits = image_size, limits
        self.spent = {Modality.IMAGE: 0.0, Modality.SPEECH: 0.0}

    def __call__(self, modality: Modality, raw: bytes, name: str) -> torch.Tensor:
        if modality == Modality.IMAGE:
            return load_image(raw, self.image_size, name, self.limits.max_image_pixels,
                              lambda pixels: self._spend(modality, pixels, name))
        return load_audio(raw, SAMPLE_RATE, name, self.limits.max_audio_seconds,
                          lambda seconds: self._spend(modality, seconds, name))

    def _spend(self, modality: Modality, amount: float, name: str) -> None:
        """Count one medium's size (from its header) against the document's budget, before decoding it."""
        self.spent[modality] += amount
        cap, key = ((self.limits.max_doc_pixels, "max_doc_pixels") if modality == Modality.IMAGE
                    else (self.limits.max_doc_audio_seconds, "max_doc_audio_seconds"))
        if self.spent[modality] > cap:
            raise BadSample("doc_too_large", f"{name}: the document's {modality.label} reaches "
                            f"{self.spent[modality]:,.0f} > data.loader.{key} {cap:,}")


def _pair(key: str, sample: dict, ext: str, modality: Modality, keep, media: _MediaLoader) -> Document:
    if "txt" not in sample:
        raise BadSample("missing_member", f"{key}.{ext} has no {key}.txt caption/transcript")
    text = (Modality.TEXT, lambda: _text(sample["txt"], key))
    item = (modality, lambda: media(modality, sample[ext], f"{key}.{ext}"))
    text_first = zlib.crc32(key.encode()) % 2 == 0
    return _build(key, [text, item] if text_first else [item, text], keep)


def _interleaved(key: str, sample: dict, keep, media: _MediaLoader) -> Document:
    segments = _segments_json(key, sample["json"])
    named = sum(1 for seg in segments if isinstance(seg.get("file"), str))
    if named > media.limits.max_doc_members:
        raise BadSample("too_many_members", f"{key}.json names {named} media files > data.loader.max_doc_members "
                        f"{media.limits.max_doc_members}")
    parts = []
    for i, seg in enumerate(segments):
        modality = _segment_modality(key, i, seg)
        parts.append((modality, _segment_loader(key, i, seg, modality, sample, media)))
    return _build(key, parts, keep)


def _segments_json(key: str, raw: bytes) -> list:
    try:
        meta = json.loads(raw)
    except UnicodeDecodeError as err:
        raise BadSample("bad_encoding", f"{key}.json is not UTF-8: {err}") from None
    except (json.JSONDecodeError, RecursionError) as err:
        raise BadSample("bad_json", f"{key}.json: {type(err).__name__}: {err}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("segments"), list):
        raise BadSample("bad_json", f'{key}.json: expected {{"segments": [...]}}')
    if not all(isinstance(s, dict) for s in meta["segments"]):
        raise BadSample("bad_json", f"{key}.json: every segment must be an object")
    return meta["segments"]


def _segment_modality(key: str, i: int, seg: dict) -> Modality:
    try:
        return Modality.parse(seg.get("modality"))
    except ValueError as err:
        raise BadSample("unknown_modality", f"{key}.json segment {i}: {err}") from None


def _segment_loader(key: str, i: int, seg: dict, modality: Modality, sample: dict, media: _MediaLoader):
    if modality == Modality.TEXT:
        if not isinstance(seg.get("text"), str):
            raise BadSample("bad_json", f'{key}.json segment {i}: text segment needs a "text" string')
        return lambda: _json_text(seg["text"], f"{key}.json segment {i}")
    name = seg.get("file")
    if not isinstance(name, str):
        raise BadSample("bad_json", f'{key}.json segment {i}: {modality.label} segment needs a "file" name')
    member = name.lower()

    def load():
        if member not in sample:
            raise BadSample(
                "missing_member", f"{key}.json names {name!r} but {key}.{name} is not in the shard"
            )
        return media(modality, sample[member], f"{key}.{name}")

    return load


def _build(key: str, parts: list, keep: frozenset[Modality]) -> Document:
    """Run the loaders of kept segments only (dropped media is never decoded)."""
    doc = Document(key)
    for modality, load in parts:
        if modality not in keep:
            doc.dropped += 1
            continue
        doc.segments.append(Segment(modality, load()))
    return doc


def _json_text(text: str, where: str) -> str:
    """A JSON string the tokenizers can take: JSON escapes may spell lone surrogates (``"\\ud800"``),
    which no UTF-8 encoder accepts."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise BadSample("bad_encoding", f"{where}: not encodable as UTF-8 (lone surrogate?): {err}") from None
    return text


def _text(raw: bytes, key: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadSample("bad_encoding", f"{key}.txt is not UTF-8: {err}") from None


def load_image(raw: bytes, size: int, name: str = "image", max_pixels: int = NO_LIMITS.max_image_pixels,
               spend: Callable[[int], None] | None = None) -> torch.Tensor:
    """Encoded image bytes -> ``float[3, size, size]`` in [0, 1] (RGB, resized + centre-cropped).

    Raises ``BadSample("image_too_large")`` from the header when width * height > ``max_pixels``.
    """
    try:
        with warnings.catch_warnings():  # our own limit decides; PIL's bomb warning would only add noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw))  # reads the header only
        with img:
            width, height = img.size
            if width * height > max_pixels:
                raise BadSample("image_too_large", f"{name}: {width}x{height} = {width * height:,} pixels > "
                                f"data.loader.max_image_pixels {max_pixels:,}")
            if spend is not None:  # the document's budget (raises BadSample when spent)
                spend(width * height)
            img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale still >= size (others: no-op)
            img = ImageOps.fit(to_rgb(img), (size, size), Image.Resampling.BICUBIC)  # one mode conversion
    except PASS_THROUGH:
        raise
    except Image.DecompressionBombError as err:
        raise BadSample("image_too_large", f"{name}: {err}") from None
    except IMAGE_ERRORS as err:
        raise BadSample("bad_image", f"{name}: {type(err).__name__}: {err}") from None
    array = np.asarray(img, dtype=np.float32) / 255.0  # (S, S, 3)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()  # (3, S, S)


def load_audio(raw: bytes, sample_rate: int = SAMPLE_RATE, name: str = "audio",
               max_seconds: float = NO_LIMITS.max_audio_seconds,
               spend: Callable[[float], None] | None = None) -> torch.Tensor:
    """Encoded audio bytes (WAV/FLAC/...) -> mono ``float[samples]`` at ``sample_rate``.

    Raises ``BadSample("audio_too_long")`` from the header when the recording is longer than ``max_seconds``.
    """
    try:
        with soundfile.SoundFile(io.BytesIO(raw)) as file:  # reads the header only
            seconds = file.frames / file.samplerate if file.samplerate > 0 else 0.0
            if seconds > max_seconds:
                raise BadSample("audio_too_long", f"{name}: {seconds:.1f} s > data.loader.max_audio_seconds "
                                f"{max_seconds:g}")
            if spend is not None:
                spend(seconds)
            data, rate = file.read(dtype="float32", always_2d=True), file.samplerate  # (N, C)
    except PASS_THROUGH:
        raise
    except AUDIO_ERRORS as err:
        raise BadSample("bad_audio", f"{name}: {type(err).__name__}: {err}") from None
    if data.shape[0] == 0:
        raise BadSample("bad_audio", f"{name}: no samples")
    if not np.isfinite(data).all():  # a float WAV may hold NaN/inf (as tokenizers.media.read_audio refuses)
        raise BadSample("bad_audio", f"{name}: non-finite samples (NaN/inf)")
    wave = torch.from_numpy(data).mean(dim=1)  # (N,) mono
    if rate != sample_rate:
        wave = torchaudio.functional.resample(wave, rate, sample_rate)
    return wave
