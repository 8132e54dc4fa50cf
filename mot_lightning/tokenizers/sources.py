"""Training inputs for tokenizer fitting: a folder (searched recursively), one file, a glob, or
WebDataset tar shards (a ``.tar`` path, a folder of them, or a brace pattern ``shards-{000..009}.tar``).

Inside shards every member whose name ends in a wanted extension is one item (so
``<key>.jpg``, ``<key>.wav``, ``<key>.txt`` and interleaved ``<key>.img0.png`` all count).
Members are handed over as raw bytes and decoded by the caller (PIL / soundfile / utf-8):
nothing is unpickled.
"""
from __future__ import annotations

import glob
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import webdataset as wds
from braceexpand import braceexpand

T = TypeVar("T")


def resolve(path: str, exts: tuple[str, ...]) -> tuple[list[Path], list[str]]:
    """-> (media files, tar shard urls), both sorted; raises if there is nothing usable."""
    files: list[Path] = []
    shards: list[str] = []
    p = Path(path)
    if "{" in path and ".tar" in path:
        shards = list(braceexpand(path))  # installed with webdataset
        missing = [s for s in shards if not Path(s).is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} shard(s) of {path!r} do not exist, e.g. {missing[0]!r}")
    elif p.is_dir():
        found = sorted(q for q in p.rglob("*") if q.is_file())
        files = [q for q in found if q.suffix.lower() in exts]
        shards = [str(q) for q in found if q.suffix.lower() == ".tar"]
    elif p.is_file():
        if p.suffix.lower() == ".tar":
            shards = [str(p)]
        else:
            files = [p]
    else:
        matches = sorted(Path(m) for m in glob.glob(path, recursive=True))
        files = [q for q in matches if q.suffix.lower() in exts]
        shards = [str(q) for q in matches if q.suffix.lower() == ".tar"]
    if not files and not shards:
        raise FileNotFoundError(
            f"no training data at {path!r}: expected a folder, file or glob of {'/'.join(exts)} files, or "
            f".tar WebDataset shards (make demo data with `mot tokenizer demo-data`)"
        )
    return files, shards


def iter_items(path: str, exts: tuple[str, ...], decode: Callable[[bytes | Path], T],
               max_items: int | None = None) -> Iterator[tuple[str, T]]:
    """Yield (key, decoded item) from files then shards; undecodable items are skipped with a warning."""
    files, shards = resolve(path, exts)
    root = Path(path) if Path(path).is_dir() else None
    count = 0
    for key, source in _raw_items(files, shards, exts, root):
        if max_items is not None and count >= max_items:
            return
        try:
            item = decode(source)
        except ValueError as err:
            warnings.warn(f"skipping {key}: {err}", stacklevel=2)
            continue
        count += 1
        yield key, item


def _raw_items(files: list[Path], shards: list[str], exts: tuple[str, ...],
               root: Path | None) -> Iterator[tuple[str, bytes | Path]]:
    for f in files:  # keys relative to the data folder: the held-out split must not depend on where it lives
        yield (f.relative_to(root).as_posix() if root else f.name), f
    if not shards:
        return
    dataset = wds.WebDataset(shards, shardshuffle=False, nodesplitter=None, workersplitter=None,
                             handler=wds.warn_and_continue, empty_check=False)
    for sample in dataset:
        for member, data in sample.items():
            if not member.startswith("__") and ("." + member.lower()).endswith(exts):
                yield f"{sample['__key__']}.{member}", data


def is_held_out(key: str, fraction: float, seed: int = 0) -> bool:
    """Deterministic split by key hash (stable across runs, machines and file order)."""
    return (zlib.crc32(f"{seed}:{key}".encode()) % 100_000) < fraction * 100_000


def split(keyed: list[tuple[str, T]], fraction: float, seed: int = 0) -> tuple[list[T], list[T]]:
    """-> (train, held-out). At least one item is held out when ``fraction > 0`` and there are >= 2 items."""
    train = [x for k, x in keyed if not is_held_out(k, fraction, seed)]
    held = [x for k, x in keyed if is_held_out(k, fraction, seed)]
    if fraction > 0 and not held and len(train) >= 2:
        held = [train.pop()]
    if not train:
        raise ValueError(f"nothing left to train on after holding out {fraction:.0%}; lower data.held_out")
    return train, held
