"""Skip and packing counters shared by the DataLoader worker processes of one stream.

Aggregation: each stream owns one ``int64[slots, fields]`` tensor in shared
memory (``share_memory_()``), created in the main process before the workers
start. Worker ``w`` only ever writes row ``w`` (the main process, with
``num_workers=0``, writes row 0), so no lock is needed; the main process sums
the rows whenever it reads. This works with both ``fork`` and ``spawn`` worker
start methods (torch pickles shared-memory tensors as handles) and keeps the
counts even for workers that produced no batch. Counts are per rank; sum them
across ranks when logging (``self.log(..., sync_dist=True, reduce_fx="sum")``).
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import get_worker_info

log = logging.getLogger("mot_lightning.data")

# Documents (or shards) that could not be used, by reason.
SKIP_REASONS = (
    "bad_json",  # interleaved <key>.json is not JSON / not {"segments": [...]} / a segment lacks fields
    "unknown_modality",  # a segment names a modality that does not exist
    "missing_member",  # a referenced file (or a pair's caption/media) is not in the sample
    "bad_image",  # image bytes PIL cannot decode
    "bad_audio",  # audio bytes soundfile cannot decode, or empty audio
    "unknown_layout",  # a sample matching none of the layouts in DESIGN.md "Shards"
    "empty_doc",  # nothing left to tokenize
    "too_long",  # more tokens than one row holds (with overlong="skip")
    "unreadable_shard",  # truncated/corrupt tar or unreadable file: once per shard (shards/reader.py)
    "duplicate_member",  # the same member name twice in one sample (second copy ignored, shards/reader.py)
)
# Bookkeeping of what was packed.
STATS = (
    "docs",  # documents packed
    "tokens",  # real (non-padding) tokens packed
    "padding",  # PAD positions
    "truncated_docs",  # over-long documents cut (overlong="truncate")
    "truncated_tokens",  # tokens cut from them
    "dropped_segments",  # segments of modalities the source does not keep
    "filtered_docs",  # documents with only dropped segments (not an error)
)
FIELDS = SKIP_REASONS + STATS
_INDEX = {name: i for i, name in enumerate(FIELDS)}
_WARN_FIRST = 5  # log the first few occurrences of each skip reason per worker


class StreamCounters:
    """Per-worker counts of ``FIELDS``; the shard reader's ``Counts`` (``add(name, n, detail)``)."""

    def __init__(self, slots: int = 1) -> None:
        self.table = torch.zeros(max(slots, 1), len(FIELDS), dtype=torch.long).share_memory_()
        self._warned: dict[str, int] = {}

    def add(self, name: str, n: int = 1, detail: str = "") -> None:
        slot = _slot()
        if slot >= self.table.shape[0]:
            raise RuntimeError(
                f"StreamCounters has {self.table.shape[0]} slots but worker {slot} is running; "
                "create the counters with slots=num_workers"
            )
        self.table[slot, _INDEX[name]] += n
        if name in SKIP_REASONS:
            self._warn(name, detail)

    def _warn(self, name: str, detail: str) -> None:
        seen = self._warned.get(name, 0)
        self._warned[name] = seen + 1
        if seen < _WARN_FIRST:
            log.warning("skipped (%s): %s", name, detail or "no detail")

    def totals(self) -> dict[str, int]:
        """All fields summed over workers."""
        sums = self.table.sum(dim=0).tolist()
        return dict(zip(FIELDS, sums))

    def skips(self) -> dict[str, int]:
        """Skip counts by reason (summed over workers)."""
        totals = self.totals()
        return {name: totals[name] for name in SKIP_REASONS}

    def reset(self) -> None:
        self.table.zero_()

    def __getstate__(self) -> dict:
        return {"table": self.table}

    def __setstate__(self, state: dict) -> None:
        self.table = state["table"]
        self._warned = {}


class NullCounters(StreamCounters):
    """Counts nothing (a consumer re-reading shards another consumer already counts)."""

    def __init__(self) -> None:
        self._warned = {}

    def add(self, name: str, n: int = 1, detail: str = "") -> None:
        pass


def _slot() -> int:
    info = get_worker_info()
    return 0 if info is None else info.id

