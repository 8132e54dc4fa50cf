"""The streaming dataset: shards -> samples -> documents -> joint ids -> packed ``MultiModalBatch``.

Runs entirely inside each DataLoader worker (decoding and tokenizing included).

Splitting (DESIGN.md "Known facts": WebDataset's node splitters are not used):
the ``rank * num_workers + worker_id`` *consumer* reads

- its own shards, ``shards[consumer::consumers]``, when a source has at least
  as many shards as there are consumers (each consumer in its own shuffled
  order per pass);
- otherwise every shard in one shared order, keeping every ``consumers``-th
  sample starting at ``consumer``.

Either way the consumers read disjoint samples. The training stream is
infinite (each consumer cycles over its part, reshuffling the shard order
each pass); the training loader cuts it into epochs of a fixed number of
batches (``EpochLoader``), so every rank yields the same number of batches.
This replaces WebDataset's ``resampled=True`` (which draws shards with
replacement independently per consumer, so ranks would overlap) and
``with_epoch`` (which restarts the workers with the same seed every epoch).
Validation streams are finite: one pass, the last partial row and batch kept.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mot_lightning.data.batch import MultiModalBatch
from mot_lightning.data.counters import NullCounters, StreamCounters
from mot_lightning.data.documents import BadSample, parse_sample
from mot_lightning.data.encode import DocumentEncoder
from mot_lightning.data.packing import Packer, collate_rows
from mot_lightning.modality import Modality
from mot_lightning.shards.reader import shard_samples


@dataclass(frozen=True)
class ResolvedSource:
    """A source with its shard URLs expanded and its modality filter resolved."""

    name: str
    urls: tuple[str, ...]
    weight: float
    keep: frozenset[Modality]


@dataclass(frozen=True)
class StreamConfig:
    seq_len: int
    batch_size: int
    image_size: int
    infinite: bool  # training: cycle forever; validation: one pass
    shuffle_buffer: int = 0  # documents; 0 = keep shard order
    overlong: str = "skip"
    open_rows: int = 1  # rows packed at once (first fit); 1 = greedy in document order
    seed: int = 0
    caption_dropout: float = 0.0  # infinite streams only: P(a document with an image loses its text)


class PackedStream(IterableDataset):
    """Yields ``MultiModalBatch`` of ``batch_size`` rows (the last one may be smaller when finite)."""

    def __init__(
        self,
        sources: list[ResolvedSource],
        encoder: DocumentEncoder,
        config: StreamConfig,
        counters: StreamCounters,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not sources:
            raise ValueError("PackedStream needs at least one source")
        self.sources, self.encoder, self.config, self.counters = sources, encoder, config, counters
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self._drop_rng = random.Random(f"{config.seed}-caption-dropout")  # reseeded per iteration

    def set_epoch(self, epoch: int) -> None:
        """Reseed shard order and shuffling (read by workers started after this call)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[MultiModalBatch]:
        consumer, consumers = self._consumer()
        cfg = self.config
        rng = random.Random(f"{cfg.seed}-{self.epoch}-{consumer}")
        # its own generator: turning caption dropout on or off leaves the document order alone
        self._drop_rng = random.Random(f"{cfg.seed}-{self.epoch}-{consumer}-caption-dropout")
        docs = self._documents(consumer, consumers, rng)
        if cfg.shuffle_buffer > 1:
            docs = wds.shuffle(cfg.shuffle_buffer, initial=cfg.shuffle_buffer, rng=rng)(docs)
        packer = Packer(cfg.seq_len, cfg.overlong, self.counters, open_rows=cfg.open_rows)
        rows: list = []
        for doc in docs:
            rows += packer.add(doc)
            if len(rows) >= cfg.batch_size:
                yield self._collate(rows[: cfg.batch_size])
                rows = rows[cfg.batch_size :]
        rows += packer.flush()
        for i in range(0, len(rows), cfg.batch_size):
            yield self._collate(rows[i : i + cfg.batch_size])

    def _collate(self, rows: list) -> MultiModalBatch:
        return collate_rows(rows, self.config.seq_len, self.encoder.vocab)

    def _consumer(self) -> tuple[int, int]:
        info = get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        return self.rank * workers + worker, self.world_size * workers

    # --- documents ------------------------------------------------------------
    def _documents(self, consumer: int, consumers: int, rng: random.Random) -> Iterator[torch.Tensor]:
        streams = [self._source_docs(s, consumer, consumers) for s in self.sources]
        if not self.config.infinite:
            for stream in streams:
                yield from stream
            return
        weights = [s.weight for s in self.sources]
        while True:  # every source stream is infinite
            (stream,) = rng.choices(streams, weights)
            yield next(stream)

    def _source_docs(self, source: ResolvedSource, consumer: int, consumers: int) -> Iterator[torch.Tensor]:
        own_shards = len(source.urls) >= consumers
        # Shared shards are read by every consumer: only consumer 0 counts their tar-level errors.
        tar_counters = self.counters if own_shards or consumer == 0 else NullCounters()
        passes = 0
        while True:
            urls = self._pass_order(source, consumer, consumers, passes, own_shards)
            samples = shard_samples(urls, tar_counters)
            produced = 0
            for index, sample in enumerate(samples):
                if not own_shards and index % consumers != consumer:
                    continue
                doc = self._encode(sample, source)
                if doc is not None:
                    produced += 1
                    yield doc
            passes += 1
            if not self.config.infinite:
                return
            if produced == 0:
                raise RuntimeError(
                    f"source {source.name!r} yielded no usable document in a whole pass over its shards "
                    f"(consumer {consumer} of {consumers}); check the skip counts and the shard contents"
                )

    def _pass_order(self, source, consumer: int, consumers: int, passes: int, own_shards: bool) -> list[str]:
        urls = list(source.urls[consumer::consumers] if own_shards else source.urls)
        if self.config.infinite:
            # own shards: own order; shared shards: one order for all consumers (the split is by index)
            who = consumer if own_shards else "all"
            random.Random(f"{self.config.seed}-{self.epoch}-{source.name}-{who}-{passes}").shuffle(urls)
        return urls

    def _encode(self, sample: dict, source: ResolvedSource) -> torch.Tensor | None:
        try:
            doc = parse_sample(sample, source.keep, self.config.image_size)
            if doc.dropped:
                self.counters.add("dropped_segments", doc.dropped)
            if not doc.segments and doc.dropped:
                self.counters.add("filtered_docs")
                return None
            return self.encoder.encode(doc, drop_text=self._drop_text(doc))
        except BadSample as bad:
            self.counters.add(bad.reason, detail=bad.detail)
            return None

    def _drop_text(self, doc) -> bool:
        """Caption dropout for classifier-free guidance: training documents that hold an image."""
        p = self.config.caption_dropout
        if p <= 0 or not self.config.infinite or not any(s.modality == Modality.IMAGE for s in doc.segments):
            return False
        return self._drop_rng.random() < p


class EpochLoader:
    """A training DataLoader cut into epochs of exactly ``batches`` batches (equal on every rank).

    Each ``iter()`` starts a new epoch: the dataset is reseeded with the epoch
    number before the workers start (so workers must not be persistent).

    Resumable (Lightning saves ``state_dict()`` with the fit loop and restores it
    before iterating): the state is the seed of the epoch in progress and how many
    of its batches were handed out. A resumed ``iter()`` regenerates that epoch and
    skips what was already trained on, so a resumed run sees exactly the batches an
    unbroken run would, wherever the checkpoint was taken.
    """

    def __init__(self, loader: DataLoader, batches: int) -> None:
        if loader.persistent_workers:
            raise ValueError("EpochLoader reseeds the dataset per epoch; use persistent_workers=False")
        self.loader, self.batches, self.epoch = loader, batches, 0
        self._current: int | None = None  # seed of the epoch being iterated
        self._yielded = 0
        self._skip = 0

    def __len__(self) -> int:
        return self.batches

    def state_dict(self) -> dict:
        if self._current is None:
            return {"epoch": self.epoch, "yielded": 0}
        return {"epoch": self._current, "yielded": self._yielded}

    def load_state_dict(self, state: dict) -> None:
        # saved at an epoch end (yielded == batches), the next iter() is empty and the one after
        # starts the next epoch: whichever way the trainer treats that epoch, no batch is lost or repeated
        self.epoch, self._skip = int(state["epoch"]), min(int(state["yielded"]), self.batches)

    def __iter__(self) -> Iterator[MultiModalBatch]:
        seed, skip = self.epoch, self._skip
        self.loader.dataset.set_epoch(seed)
        self.epoch, self._skip = seed + 1, 0
        self._current, self._yielded = seed, skip
        iterator = iter(self.loader)
        for _ in range(skip):  # already trained on before the checkpoint
            next(iterator)
        for _ in range(self.batches - skip):
            batch = next(iterator)
            self._yielded += 1
            yield batch
