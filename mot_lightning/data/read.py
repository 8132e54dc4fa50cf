"""Tar shards -> raw samples (``{"__key__": ..., "<ext>": bytes}``), counting unreadable shards.

Uses WebDataset's ``gopen`` (local paths, URLs, ``pipe:``) and ``group_by_keys``;
the member loop is our own so that a damaged shard is one event: on the first
error inside a shard (truncated or corrupt tar, unreadable file) reading of
that shard stops, ``unreadable_shard`` is counted once, and the stream goes on
with the next shard. The sample that was being read is dropped: the one whose
member data failed, or, when a member *header* failed (its name unknown), the
last sample started (a tar stream cannot tell whether it was complete).
Earlier samples are kept. A member name occurring twice in one sample is
counted as ``duplicate_member`` and its second copy ignored.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterable, Iterator

import webdataset as wds
from webdataset.tariterators import base_plus_ext, group_by_keys

from mot_lightning.data.counters import CountingHandler, StreamCounters

_META = re.compile(r"__[^/]*__($|/)")  # WebDataset's convention for metadata members


def shard_files(urls: Iterable[str], counters: StreamCounters) -> Iterator[dict]:
    """File entries ``{"fname", "data", "__url__"}`` of every shard, an end-of-shard marker ``{}`` after each."""
    for url in urls:
        state = {"reading": None, "last": None}  # member whose data is being read / last member yielded
        try:
            with wds.gopen(url) as stream:
                for entry in _members(stream, state):
                    yield {**entry, "__url__": url}
        except Exception as exn:  # noqa: BLE001 - tarfile.ReadError, OSError, EOFError, ...
            counters.add("unreadable_shard", detail=f"{url}: {type(exn).__name__}: {exn}")
            in_flight = state["reading"] or state["last"]
            if in_flight is not None:
                key, _ = base_plus_ext(in_flight)
                yield {"fname": f"{key}.__bad__", "data": True, "__url__": url}  # group_by_keys drops it
        yield {}


def _members(stream, state: dict) -> Iterator[dict]:
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for info in tar:
            if not info.isreg() or _META.match(info.name):
                continue
            state["reading"] = info.name
            data = tar.extractfile(info).read()
            state["reading"], state["last"] = None, info.name
            yield {"fname": info.name, "data": data}
            tar.members = []  # stream mode: do not keep every header in memory


def shard_samples(urls: Iterable[str], counters: StreamCounters) -> Iterator[dict]:
    """Samples grouped by key; never merges samples across shards."""
    handler = CountingHandler(counters, "duplicate_member")
    return group_by_keys(shard_files(urls, counters), handler=handler)
