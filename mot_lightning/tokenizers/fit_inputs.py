"""Training inputs of a tokenizer fit (``FitData.path``): a folder (searched recursively), one file,
a glob, or WebDataset tar shards (a ``.tar`` path, a folder of them, a brace pattern
``shards-{000..009}.tar``, ``::``-joined lists, or remote shard URLs: ``https://``, ``s3://``,
``pipe:CMD``..., every remote URL being a shard). Patterns are expanded by ``shards/urls.py`` and
shards read by ``shards/reader.py``, the same code the training data goes through.

Inside shards every member whose name ends in a wanted extension is one item (so
``<key>.jpg``, ``<key>.wav``, ``<key>.txt`` and interleaved ``<key>.img0.png`` all count).
Members are handed over as raw bytes and decoded by the caller (PIL / soundfile / utf-8):
nothing is unpickled. Unreadable shards and undecodable items are skipped with a warning.
``max_items`` stops reading after that many items, files first then shards in sorted order
(a warning says so when more was there).
"""
from __future__ import annotations

import logging
import os
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from mot_lightning.shards.reader import shard_samples
from mot_lightning.shards.urls import check_openable, expand, is_local, local_path

T = TypeVar("T")
log = logging.getLogger("mot_lightning.tokenizers")


def resolve(path: str, exts: tuple[str, ...]) -> tuple[list[Path], list[str]]:
    """-> (media files, tar shard urls), both sorted; raises if there is nothing usable."""
    p = Path(path)
    if p.is_file():  # one file is used whatever its extension
        return ([], [path]) if p.suffix.lower() == ".tar" else ([p], [])
    urls = [str(q) for q in sorted(p.rglob("*")) if q.is_file()] if p.is_dir() else _expand_pattern(path)
    files = [Path(u) for u in urls if is_local(u) and Path(u).suffix.lower() in exts]
    shards = [u for u in urls if u.lower().endswith(".tar") or not is_local(u)]  # remote: always shards
    if not files and not shards:
        raise FileNotFoundError(
            f"no training data at {path!r}: expected a folder, file or glob of {'/'.join(exts)} files, or "
            f".tar WebDataset shards (make demo data with `mot tokenizer demo-data`)"
        )
    return files, shards


def _expand_pattern(path: str) -> list[str]:
    """A glob or brace pattern -> the existing local files it names (remote shard URLs kept)."""
    try:
        urls = expand(path, f"data.path {path!r}")
    except FileNotFoundError:  # a glob that matches nothing: reported as "no training data"
        return []
    check_openable(urls, f"data.path {path!r}")
    local = [local_path(u) for u in urls if is_local(u)]
    missing = [u for u in local if not os.path.isfile(u)]
    if missing and len(missing) < len(urls):  # a partly missing shard list is a mistake, not "no data"
        raise FileNotFoundError(
            f"{len(missing)} of {len(urls)} files of {path!r} do not exist, e.g. {missing[0]!r}; fix the path"
        )
    return [u for u in local if os.path.isfile(u)] + [u for u in urls if not is_local(u)]


def iter_items(path: str, exts: tuple[str, ...], decode: Callable[[bytes | Path], T],
               max_items: int | None = None) -> Iterator[tuple[str, T]]:
    """Yield (key, decoded item) from files then shards; undecodable items are skipped with a warning."""
    files, shards = resolve(path, exts)
    root = Path(path) if Path(path).is_dir() else None
    count = 0
    for key, source in _raw_items(files, shards, exts, root):
        if max_items is not None and count >= max_items:  # and there is more: say what the fit did not see
            log.warning("tokenizer fit: read the first %d items of %s and not the rest (the item cap: "
                        "data.tokenizer_files.fit_items, or data.max_items of `mot tokenizer fit`); if its "
                        "shards are ordered (by source, class, date), name a spread of them instead", count, path)
            return
        try:
            item = decode(source)
        except ValueError as err:
            warnings.warn(f"skipping {key}: {err}", stacklevel=2)
            continue
        count += 1
        yield key, item
    if count == 0:
        raise FileNotFoundError(f"nothing to fit on in {path!r}: no readable {'/'.join(exts)} item in its "
                                f"{len(shards)} shards and {len(files)} matching files; point the fit data at "
                                "files or shards that hold this modality (data.tokenizer_files.fit_data, or "
                                "data.path of `mot tokenizer fit`)")


def _raw_items(files: list[Path], shards: list[str], exts: tuple[str, ...],
               root: Path | None) -> Iterator[tuple[str, bytes | Path]]:
    for f in files:  # keys relative to the data folder: the held-out split must not depend on where it lives
        yield (f.relative_to(root).as_posix() if root else f.name), f
    for sample in shard_samples(shards, _Warn()):
        for member, data in sample.items():
            if not member.startswith("__") and ("." + member.lower()).endswith(exts):
                yield f"{sample['__key__']}.{member}", data


class _Warn:
    """The shard reader's ``Counts``: warn about unreadable shards and duplicate members."""

    def add(self, name: str, n: int = 1, detail: str = "") -> None:
        warnings.warn(f"tokenizer data: {name}: {detail}", stacklevel=2)


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
