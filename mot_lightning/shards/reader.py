"""Tar shards -> raw samples (``{"__key__": ..., "<ext>": bytes}``), counting what cannot be read.

Opens shards with ``urls.open_url`` (local paths, ``pipe:``, fsspec for remote
URLs) and groups members with WebDataset's ``group_by_keys``; the member loop
is our own so that a damaged shard is one event: on the first error inside a
shard (truncated or corrupt tar, unreadable file, a remote connection dropped
halfway) reading of that shard stops, ``unreadable_shard`` is counted once, and
the stream goes on with the next shard. The sample that was being read is
dropped: the one whose member data failed, or, when a member *header* failed
(its name unknown), the last sample started (a tar stream cannot tell whether
it was complete).
Earlier samples are kept. A member name occurring twice in one sample is
counted as ``duplicate_member`` and its second copy ignored. Metadata members
(``__*__``) and non-files are skipped. Nothing is decoded or unpickled here.

Counting goes through any object with ``add(name, n=1, detail="")`` (``Counts``):
the data layer passes its shared-memory ``StreamCounters``, tokenizer fitting one
that warns.

Generated shards: a URL whose scheme has a registered generator (``register_generator``) is not read
from anywhere; its samples are made by that generator and flow through the same grouping and counting as
a tar shard's. The data layer registers the procedural demo world's ``world://<split>/<kind>/<index>``
URLs (``world/virtual.py``) when it is imported: the shard layer knows no generator by name.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from webdataset.tariterators import base_plus_ext, group_by_keys

from mot_lightning.shards.urls import GENERATED, open_url, scheme

UNREADABLE_SHARD = "unreadable_shard"  # counted once per damaged shard
DUPLICATE_MEMBER = "duplicate_member"  # counted once per repeated member name in a sample

_META = re.compile(r"__[^/]*__($|/)")  # WebDataset's convention for metadata members


class Counts(Protocol):
    """What the reader reports to: one event ``name`` (``n`` times), with a human-readable detail."""

    def add(self, name: str, n: int = 1, detail: str = "") -> None: ...


class Oversized:
    """Stands for a member larger than the reader's ``max_member_bytes``: its bytes were never read
    (the data layer skips its sample as ``member_too_large``)."""

    def __init__(self, size: int) -> None:
        self.size = size


def shard_files(urls: Iterable[str], counts: Counts, max_member_bytes: int | None = None) -> Iterator[dict]:
    """File entries ``{"fname", "data", "__url__"}`` of each shard, then an end-of-shard marker ``{}``.
    A member over ``max_member_bytes`` is not read: its ``data`` is ``Oversized(size)``."""
    for url in urls:
        state = {"reading": None, "last": None}  # member whose data is being read / last member yielded
        try:
            if scheme(url) in GENERATED:  # generated, not read: no open_url
                for entry in _generated_members(url):
                    yield {**entry, "__url__": url}
            else:
                with open_url(url) as stream:
                    for entry in _members(stream, state, max_member_bytes):
                        yield {**entry, "__url__": url}
        except Exception as exn:  # noqa: BLE001 - tarfile.ReadError, OSError, EOFError, ...
            counts.add(UNREADABLE_SHARD, detail=f"{url}: {type(exn).__name__}: {exn}")
            in_flight = state["reading"] or state["last"]
            if in_flight is not None:
                key, _ = base_plus_ext(in_flight)
                yield {"fname": f"{key}.__bad__", "data": True, "__url__": url}  # group_by_keys drops it
        yield {}


def _members(stream, state: dict, max_bytes: int | None = None) -> Iterator[dict]:
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for info in tar:
            if not info.isreg() or _META.match(info.name):
                continue
            state["reading"] = info.name
            too_big = max_bytes is not None and info.size > max_bytes  # skipped unread by the next header read
            data = Oversized(info.size) if too_big else tar.extractfile(info).read()
            state["reading"], state["last"] = None, info.name
            yield {"fname": info.name, "data": data}
            tar.members = []  # stream mode: do not keep every header in memory


def register_generator(name: str, samples: Callable[[str], Iterable[dict]]) -> None:
    """Serve ``<name>://...`` URLs from ``samples(url)`` (raw samples ``{"__key__": key, ext: bytes}``) instead
    of opening them. Registered per process at import time by the layer that owns the generator."""
    GENERATED[name] = samples


def _generated_members(url: str) -> Iterator[dict]:
    """The members of a generated shard's samples (each sample is complete before its first member)."""
    for sample in GENERATED[scheme(url)](url):
        key = sample["__key__"]
        for ext, data in sample.items():
            if ext != "__key__":
                yield {"fname": f"{key}.{ext}", "data": data}


def shard_samples(urls: Iterable[str], counts: Counts, max_member_bytes: int | None = None) -> Iterator[dict]:
    """Samples grouped by key (member suffixes lower-cased); never merges samples across shards."""
    return group_by_keys(shard_files(urls, counts, max_member_bytes), handler=_CountAs(counts, DUPLICATE_MEMBER))


class _CountAs:
    """WebDataset ``handler=``: count the exception as ``name`` and continue (picklable)."""

    def __init__(self, counts: Counts, name: str) -> None:
        self.counts, self.name = counts, name

    def __call__(self, exn: Exception) -> bool:
        self.counts.add(self.name, detail=f"{type(exn).__name__}: {exn}")
        return True
