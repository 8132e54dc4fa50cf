"""Skip and packing counters shared by the DataLoader worker processes of one stream.

Aggregation: each stream owns one ``int64[slots, fields]`` tensor in shared
memory (``share_memory_()``), created in the main process before the workers
start. Worker ``w`` only ever writes row ``w`` (the main process, with
``num_workers=0``, writes row 0), so no lock is needed; the main process sums
the rows whenever it reads. This works with both ``fork`` and ``spawn`` worker
start methods (torch pickles shared-memory tensors as handles) and keeps the
counts even for workers that produced no batch. Counts are per rank; the data
module sums them over ranks when they are logged (``skip_metrics``).

The table counts what the workers have *read*, which runs ahead of what was
trained on by up to the DataLoader's prefetch depth, and by how far depends on
timing. The app's loaders therefore count *by batch* (``count_by_batch()``, set
by ``loaders.counted``): each batch a worker yields carries its row's change
since the worker's previous batch (``mark()``), a finite stream's end carries
what was read past its last batch, and the main process adds the change of
every batch it takes (``consume()``). The totals are then exactly the
documents read to make the batches handed out so far: the same at a training
step whatever the timing, what a resumed run (which regenerates its epoch and
takes the batches trained on before the checkpoint again) counts too, and for
a validation pass cut short, what it evaluated.

``carried`` (main process only) holds counts from before a resume, restored
from the checkpoint; ``totals()`` includes them. ``skip_report`` words the
skip-rate warning.
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import get_worker_info

log = logging.getLogger("mot_lightning.data")

# Documents (or shards) that could not be used, by reason.
SKIP_REASONS = (
    "bad_json",  # interleaved <key>.json is not JSON / not {"segments": [...]} / a segment lacks fields
    "bad_encoding",  # text (a .txt member or the .json) is not UTF-8
    "unknown_modality",  # a segment names a modality that does not exist
    "missing_member",  # a referenced file (or a pair's caption/media) is not in the sample
    "bad_image",  # image bytes PIL cannot decode
    "image_too_large",  # more pixels than data.loader.max_image_pixels (checked before decoding)
    "bad_audio",  # audio bytes soundfile cannot decode, or empty audio
    "audio_too_long",  # longer than data.loader.max_audio_seconds (checked before decoding)
    "member_too_large",  # a tar member over data.loader.max_member_bytes (never read)
    "too_many_members",  # an interleaved document naming more than data.loader.max_doc_members media files
    "doc_too_large",  # a document's images / audio over data.loader.max_doc_pixels / max_doc_audio_seconds
    "unknown_layout",  # a sample matching none of the layouts in docs/demo_data.md "Shard layouts"
    "empty_doc",  # nothing left to tokenize
    "too_long",  # more tokens than one row holds (with overlong="skip")
    "bad_document",  # any other error reading, decoding or encoding one document (data/documents.py, contained)
    "bad_pretokenized",  # a pre-tokenized document whose arrays are damaged (data/pretokenized.py)
    "unreadable_shard",  # truncated/corrupt tar or unreadable file: once per shard (shards/reader.py)
    "duplicate_member",  # the same member name twice in one sample (second copy ignored, shards/reader.py)
)
SHARD_EVENTS = ("unreadable_shard", "duplicate_member")  # not documents: left out of the skip rate
# Bookkeeping of what was packed.
STATS = (
    "docs",  # documents packed
    "tokens",  # real (non-padding) tokens packed
    "padding",  # PAD positions
    "truncated_docs",  # over-long documents cut (overlong="truncate")
    "truncated_tokens",  # tokens cut from them
    "dropped_segments",  # segments of modalities the source does not keep
    "filtered_docs",  # documents with only dropped segments, or none of data.require (not an error)
)
FIELDS = SKIP_REASONS + STATS
_INDEX = {name: i for i, name in enumerate(FIELDS)}
_WARN_FIRST = 5  # log the first few occurrences of each skip reason per worker
MIN_DOCS_FOR_RATE = 50  # documents seen before the skip rate is judged (a stream's end judges it anyway)


class StreamCounters:
    """Per-worker counts of ``FIELDS``; the shard reader's ``Counts`` (``add(name, n, detail)``)."""

    def __init__(self, slots: int = 1) -> None:
        self.table = torch.zeros(max(slots, 1), len(FIELDS), dtype=torch.long).share_memory_()
        self._cells = self.table.numpy()  # the same memory: numpy's += costs ~1 us, torch's ~15 us
        self.carried = torch.zeros(len(FIELDS), dtype=torch.long)
        self.consumed: torch.Tensor | None = None  # counts of the batches taken (count_by_batch)
        self.rate_warned = False  # the skip-rate warning was given (main process, loaders.SkipWatch)
        self._warned: dict[str, int] = {}
        self._mark = None  # this process's row at its previous mark()

    def add(self, name: str, n: int = 1, detail: str = "") -> None:
        slot = _slot()
        if slot >= self.table.shape[0]:
            raise RuntimeError(
                f"StreamCounters has {self.table.shape[0]} slots but worker {slot} is running; "
                "create the counters with slots=num_workers"
            )
        self._cells[slot, _INDEX[name]] += n
        if name in SKIP_REASONS:
            self._warn(name, detail)

    def _warn(self, name: str, detail: str) -> None:
        seen = self._warned.get(name, 0)
        self._warned[name] = seen + 1
        if seen < _WARN_FIRST:
            log.warning("skipped (%s): %s", name, detail or "no detail")

    def vector(self) -> torch.Tensor:
        """``long[len(FIELDS)]``: every field summed over workers (over the batches taken, when counting by
        batch), plus the carried counts."""
        counted = self.table.sum(dim=0) if self.consumed is None else self.consumed
        return counted + self.carried

    def count_by_batch(self) -> None:
        """From now on totals are the sum of the batches' counts passed to ``consume`` (main process)."""
        if self.consumed is None:
            self.consumed = torch.zeros(len(FIELDS), dtype=torch.long)

    def begin_marks(self) -> None:
        """Start of a worker's iteration: the next ``mark()`` counts from here."""
        self._mark = self._cells[_slot()].copy()

    def mark(self) -> list[int]:
        """What this process counted since its previous mark (or ``begin_marks``): the counts of the batch it
        is about to yield."""
        row = self._cells[_slot()].copy()
        delta, self._mark = (row - self._mark).tolist(), row
        return delta

    def consume(self, delta: list[int]) -> None:
        """Add one taken batch's counts (``mark()`` in the worker that made it)."""
        self.consumed += torch.tensor(delta, dtype=torch.long)

    def totals(self) -> dict[str, int]:
        """All fields summed over workers (plus what was carried over from before a resume)."""
        return dict(zip(FIELDS, self.vector().tolist()))

    def skips(self) -> dict[str, int]:
        """Skip counts by reason (summed over workers)."""
        totals = self.totals()
        return {name: totals[name] for name in SKIP_REASONS}

    def carry(self, totals: dict[str, int]) -> None:
        """Counts from before a resume (unknown names are ignored: a checkpoint of another version)."""
        self.carried = torch.tensor([int(totals.get(name, 0)) for name in FIELDS], dtype=torch.long)

    def reset(self) -> None:
        self.table.zero_()
        self.carried.zero_()
        if self.consumed is not None:
            self.consumed.zero_()

    def __getstate__(self) -> dict:
        return {"table": self.table}

    def __setstate__(self, state: dict) -> None:
        self.table = state["table"]
        self._cells = self.table.numpy()
        self.carried = torch.zeros(len(FIELDS), dtype=torch.long)
        self.consumed = None
        self.rate_warned = False
        self._warned = {}
        self._mark = None


class NullCounters(StreamCounters):
    """Counts nothing (a consumer re-reading shards another consumer already counts)."""

    def __init__(self) -> None:
        self._warned = {}

    def add(self, name: str, n: int = 1, detail: str = "") -> None:
        pass


def skip_report(totals: dict[str, int], threshold: float, final: bool = False) -> str | None:
    """The skip-rate warning for one stream's ``totals``, or None while the rate is at most ``threshold``
    (or, unless ``final``, fewer than ``MIN_DOCS_FOR_RATE`` documents have been seen).

    The rate is skipped documents / (skipped + packed + filtered); shard events are listed, not counted.
    """
    skipped = {name: totals[name] for name in SKIP_REASONS if totals.get(name)}
    n_skipped = sum(n for name, n in skipped.items() if name not in SHARD_EVENTS)
    seen = n_skipped + totals.get("docs", 0) + totals.get("filtered_docs", 0)
    if seen == 0 or (seen < MIN_DOCS_FOR_RATE and not final) or n_skipped / seen <= threshold:
        return None
    reasons = ", ".join(f"{name}={n}" for name, n in sorted(skipped.items(), key=lambda kv: -kv[1]))
    return f"{n_skipped} of {seen} documents skipped ({n_skipped / seen:.1%}): {reasons}"


def _slot() -> int:
    info = get_worker_info()
    return 0 if info is None else info.id


def summed_skips(counters: list[StreamCounters]) -> dict[str, int]:
    """Skips by reason, added up over several streams' counters."""
    total: dict[str, int] = {}
    for c in counters:
        for name, n in c.skips().items():
            total[name] = total.get(name, 0) + n
    return total


def sum_over_ranks(trainer, values) -> list[float]:
    """Elementwise sums over ranks: an all-reduce when ``trainer`` runs several (every rank must call this);
    the values themselves with one rank or no trainer."""
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if trainer is not None and trainer.world_size > 1 and tensor.numel():
        tensor = trainer.strategy.reduce(tensor.to(trainer.strategy.root_device), reduce_op="sum").cpu()
    return tensor.tolist()


def any_rank(trainer, flag: bool) -> bool:
    """True when ``flag`` is true on any rank (every rank must call this with several ranks)."""
    if trainer is None or trainer.world_size == 1:
        return flag
    return trainer.strategy.reduce_boolean_decision(flag, all=False)
