"""Converters: folders of pairs, text files and JSON-listed documents -> WebDataset tar shards.

Every converter checks what it writes (images decode with PIL, audio with
soundfile, captions are UTF-8 and not empty), skips and counts what fails,
and writes the layouts of docs/demo_data.md "Shard layouts" with ``webdataset.ShardWriter``
(``shard_size`` samples or ``shard_mb`` MB per shard, whichever comes first).
Keys are ``<8-digit index>_<sanitised source name>`` (no dots: WebDataset
splits member names at the first dot).
"""

from __future__ import annotations

import io
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import soundfile
import webdataset as wds
from PIL import Image
from tqdm import tqdm

from mot_lightning.data.documents import AUDIO_EXTS, IMAGE_EXTS
from mot_lightning.modality import Modality

READABLE_IMAGES = IMAGE_EXTS + ("bmp", "gif", "tif", "tiff")  # others are re-encoded as PNG
READABLE_AUDIO = AUDIO_EXTS + ("ogg", "mp3")  # others are re-encoded as FLAC


class Skip(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Summary:
    out: str
    written: int = 0
    shards: list[str] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)

    def __str__(self) -> str:
        lines = [f"wrote {self.written} samples to {len(self.shards)} shards in {self.out}"]
        if self.shards:
            lines.append(
                f"  shards: {os.path.basename(self.shards[0])} .. {os.path.basename(self.shards[-1])}"
            )
        total = sum(self.skipped.values())
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items()))
        lines.append(f"skipped {total}" + (f": {reasons}" if total else ""))
        return "\n".join(lines)


class Writer:
    """``ShardWriter`` that records shard names and removes a trailing empty shard."""

    def __init__(self, out: str, prefix: str, shard_size: int = 1000, shard_mb: float = 1000.0) -> None:
        os.makedirs(out, exist_ok=True)
        self.summary = Summary(out)
        pattern = os.path.join(out, f"{prefix}-%06d.tar")
        self._closed: list[str] = []
        self._sink = wds.ShardWriter(
            pattern, maxcount=shard_size, maxsize=int(shard_mb * 1e6), verbose=0, post=self._closed.append
        )

    def write(self, sample: dict) -> None:
        self._sink.write(sample)
        self.summary.written += 1

    def skip(self, reason: str) -> None:
        self.summary.skipped[reason] += 1

    def close(self) -> Summary:
        self._sink.close()
        shards = list(self._closed)
        if self.summary.written == 0:
            for path in shards:
                os.remove(path)
            shards = []
        self.summary.shards = shards
        return self.summary


def make_key(index: int, name: str) -> str:
    return f"{index:08d}_" + re.sub(r"[^A-Za-z0-9_-]+", "_", name)[:48]


def _files(src: str, exts: tuple[str, ...]) -> list[Path]:
    root = Path(src)
    if not root.exists():
        raise FileNotFoundError(f"{src!r} does not exist")
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return [p for p in paths if p.suffix.lower().lstrip(".") in exts]


def progress(items, desc: str, enabled: bool = True, unit: str = "file"):
    """``items`` with a tqdm bar on stderr, shown if ``enabled`` and stderr is a terminal (never in logs)."""
    return tqdm(items, desc=desc, unit=unit, disable=None if enabled else True, dynamic_ncols=True)


def _caption(media: Path) -> bytes:
    txt = media.with_suffix(".txt")
    if not txt.is_file():
        raise Skip("no_caption")
    text = _utf8(txt.read_bytes())
    if not text.strip():
        raise Skip("empty_caption")
    return text.encode("utf-8")


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise Skip("not_utf8") from None


def checked_image(path: Path) -> tuple[str, bytes]:
    """(extension, bytes) of a decodable image; exotic formats re-encoded as PNG."""
    raw = path.read_bytes()
    ext = path.suffix.lower().lstrip(".")
    try:
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
            if ext not in IMAGE_EXTS:
                buf = io.BytesIO()
                img.convert("RGB").save(buf, format="PNG")
                return "png", buf.getvalue()
    except Exception:  # noqa: BLE001 - any decoder failure is a bad sample
        raise Skip("bad_image") from None
    return ext, raw


def checked_audio(path: Path) -> tuple[str, bytes]:
    """(extension, bytes) of decodable audio; formats other than WAV/FLAC re-encoded as FLAC."""
    raw = path.read_bytes()
    ext = path.suffix.lower().lstrip(".")
    try:
        data, rate = soundfile.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    except Exception:  # noqa: BLE001 - any decoder failure is a bad sample
        raise Skip("bad_audio") from None
    if data.shape[0] == 0:
        raise Skip("bad_audio")
    if ext in AUDIO_EXTS:
        return ext, raw
    buf = io.BytesIO()
    soundfile.write(buf, data, rate, format="FLAC")
    return "flac", buf.getvalue()


def convert_pairs(src: str, out: str, modality: Modality, prefix: str | None = None,
                  show_progress: bool = False, **writer_kw) -> Summary:
    """``name.<image|audio>`` + ``name.txt`` in a folder tree -> image-caption / speech-transcript shards
    (``show_progress``: a bar over the files on a terminal)."""
    exts, check = (
        (READABLE_IMAGES, checked_image) if modality == Modality.IMAGE else (READABLE_AUDIO, checked_audio)
    )
    writer = Writer(out, prefix or modality.label, **writer_kw)
    for path in progress(_files(src, exts), f"convert {modality.label}", show_progress):
        try:
            caption = _caption(path)
            ext, data = check(path)
        except Skip as skip:
            writer.skip(skip.reason)
            continue
        key = make_key(
            writer.summary.written, str(path.relative_to(src) if Path(src).is_dir() else path.name)
        )
        writer.write({"__key__": key, ext: data, "txt": caption})
    return writer.close()


def convert_text(src: str, out: str, split: str = "file", prefix: str = "text", show_progress: bool = False,
                 **writer_kw) -> Summary:
    """``.txt`` files (one document per file, or per blank-line paragraph) and ``.jsonl`` (``{"text": ...}`` lines)."""
    if split not in ("file", "paragraph"):
        raise ValueError(f"split must be 'file' or 'paragraph', got {split!r}")
    writer = Writer(out, prefix, **writer_kw)
    for path in progress(_files(src, ("txt", "jsonl")), "convert text", show_progress):
        for name, text in _text_docs(path, split, writer):
            if not text.strip():
                writer.skip("empty")
                continue
            writer.write({"__key__": make_key(writer.summary.written, name), "txt": text.encode("utf-8")})
    return writer.close()


def _text_docs(path: Path, split: str, writer: Writer) -> Iterator[tuple[str, str]]:
    try:
        content = _utf8(path.read_bytes())
    except Skip as skip:
        writer.skip(skip.reason)
        return
    if path.suffix.lower() == ".jsonl":
        for i, line in enumerate(content.splitlines()):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
                if not isinstance(text, str):
                    raise TypeError
            except (json.JSONDecodeError, KeyError, TypeError):
                writer.skip("bad_json")
                continue
            yield f"{path.stem}_{i}", text
    elif split == "paragraph":
        for i, para in enumerate(re.split(r"\n\s*\n", content)):
            yield f"{path.stem}_{i}", para.strip()
    else:
        yield path.stem, content


def convert_interleaved(src: str, out: str, prefix: str = "interleaved", show_progress: bool = False,
                        **writer_kw) -> Summary:
    """A JSONL file (or a JSON list) of ``{"segments": [{"modality": "text", "text": ...},
    {"modality": "image"|"speech", "path": "relative/or/absolute"}, ...]}`` -> interleaved shards.

    Media paths are resolved against the JSON file's folder; files are stored as
    ``<key>.img<i>.<ext>`` / ``<key>.aud<i>.<ext>`` and named in ``<key>.json``.
    """
    path = Path(src)
    if not path.is_file():
        raise FileNotFoundError(f"{src!r} is not a file; give a .jsonl (one document per line) or .json list")
    writer = Writer(out, prefix, **writer_kw)
    for i, doc in enumerate(progress(_json_docs(path, writer), "convert interleaved", show_progress, "doc")):
        try:
            sample = _interleaved_sample(doc, path.parent)
        except Skip as skip:
            writer.skip(skip.reason)
            continue
        name = str(doc.get("id", f"{path.stem}_{i}"))
        writer.write({"__key__": make_key(writer.summary.written, name), **sample})
    return writer.close()


def _json_docs(path: Path, writer: Writer) -> Iterator[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        docs = json.loads(text)
        if not isinstance(docs, list):
            raise ValueError(f"{path}: a .json input must hold a list of documents")
        lines = [json.dumps(d) for d in docs]
    else:
        lines = [line for line in text.splitlines() if line.strip()]
    for line in lines:
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            writer.skip("bad_json")
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("segments"), list) or not doc["segments"]:
            writer.skip("bad_json")
            continue
        yield doc


def _interleaved_sample(doc: dict, base: Path) -> dict:
    segments, files = [], {}
    for i, seg in enumerate(doc["segments"]):
        if not isinstance(seg, dict):
            raise Skip("bad_json")
        try:
            modality = Modality.parse(seg.get("modality"))
        except ValueError:
            raise Skip("unknown_modality") from None
        if modality == Modality.TEXT:
            if not isinstance(seg.get("text"), str):
                raise Skip("bad_json")
            segments.append({"modality": "text", "text": seg["text"]})
            continue
        ref = seg.get("path", seg.get("file"))
        if not isinstance(ref, str):
            raise Skip("bad_json")
        media = base / ref
        if not media.is_file():
            raise Skip("missing_file")
        ext, data = checked_image(media) if modality == Modality.IMAGE else checked_audio(media)
        name = f"{'img' if modality == Modality.IMAGE else 'aud'}{i}.{ext}"
        files[name] = data
        segments.append({"modality": modality.label, "file": name})
    return {"json": json.dumps({"segments": segments}).encode("utf-8"), **files}
