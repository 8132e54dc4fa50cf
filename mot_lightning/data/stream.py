"""The streaming dataset: shards -> samples -> documents -> joint ids -> packed ``MultiModalBatch``.

Runs entirely inside each DataLoader worker (decoding and tokenizing included;
pre-tokenized documents, ``pretokenized.py``, skip both).

Splitting (WebDataset's node splitters are not used):
the ``rank * num_workers + worker`` *consumer* reads its share of each source
(``split.py``): its own shards when shards can be dealt out fairly, else every
shard of its group keeping every ``group_size``-th sample. Either way the
consumers read disjoint samples, and (in training) each consumer's share holds
about as many documents as any other's, so no consumer repeats its documents
more often than the others. The training stream is infinite (each consumer
cycles over its share, reshuffling the shard order each pass); the training
loader cuts it into epochs of a fixed number of batches (``loaders.EpochLoader``),
so every rank yields the same number of batches. This replaces WebDataset's
``resampled=True`` (which draws shards with replacement independently per
consumer, so ranks would overlap) and ``with_epoch`` (which restarts the workers
with the same seed every epoch). Validation streams are finite: one pass, the
last partial row and batch kept.

Mixing (training): each document's source is drawn with the weights of the optimizer step of the batch
the worker is filling (``mix.py``: the ``MixSchedule`` and the ``BatchClock`` set by the data module,
constant weights without a schedule). With more than one source every training batch carries
``source_ids`` (the source of each position's document, -1 for padding): per-source training losses.

A document is *usable* once it fits a row (``overlong="skip"`` drops longer ones
here, counted ``too_long``). A training consumer whose whole pass over a source
yields no usable document raises ``NoUsableDocument`` naming the cause (e.g. no
document fits ``seq_len``) instead of looking for one forever.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace

import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from mot_lightning.data.batch import IGNORE_INDEX, MultiModalBatch
from mot_lightning.data.counters import NullCounters, StreamCounters
from mot_lightning.data.documents import NO_LIMITS, BadSample, DecodeLimits, contained, parse_sample
from mot_lightning.data.encode import DocumentEncoder
from mot_lightning.data.mix import BatchClock, MixSchedule
from mot_lightning.data.packing import Doc, LatentDoc, Packer, collate_rows
from mot_lightning.data.pretokenized import PretokenizedReader
from mot_lightning.data.split import Share, share
from mot_lightning.modality import Modality
from mot_lightning.shards.reader import shard_samples


@dataclass(frozen=True)
class ResolvedSource:
    """A source with its shard URLs expanded and its modality filter resolved."""

    name: str
    urls: tuple[str, ...]
    weight: float
    keep: frozenset[Modality]
    sizes: tuple[int, ...] | None = None  # bytes per shard where known (local shards), for the split


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
    limits: DecodeLimits = NO_LIMITS  # largest image / audio decoded
    require: frozenset[Modality] = frozenset()  # keep only documents with a token of one of these (data.require)


class NoUsableDocument(RuntimeError):
    """A whole pass over a training source's share gave no document that fits a row."""


class PackedStream(IterableDataset):
    """Yields ``MultiModalBatch`` of ``batch_size`` rows (the last one may be smaller when finite); with
    ``counts_per_batch``, ``(batch, counts)`` pairs (``StreamCounters.mark``), a finite stream ending with
    ``(None, counts)``."""

    def __init__(
        self,
        sources: list[ResolvedSource],
        encoder: DocumentEncoder,
        config: StreamConfig,
        counters: StreamCounters,
        rank: int = 0,
        world_size: int = 1,
        pretokenized: PretokenizedReader | None = None,
    ) -> None:
        if not sources:
            raise ValueError("PackedStream needs at least one source")
        self.sources, self.encoder, self.config, self.counters = sources, encoder, config, counters
        self.rank, self.world_size = rank, world_size
        self.pretokenized = pretokenized or PretokenizedReader.for_encoder(encoder, config.image_size)
        self.epoch = 0
        self.mix = MixSchedule.constant([s.weight for s in sources])  # the data module sets both
        self.clock = BatchClock(1)
        self._tags = config.infinite and len(sources) > 1  # batches carry source_ids
        # yield (batch, its counts) pairs instead of batches: set by loaders.counted (counters.py)
        self.counts_per_batch = False
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
        made = [0]  # batches this worker has yielded in this epoch: it is filling batch made * W + w
        workers, worker = consumers // self.world_size, consumer % (consumers // self.world_size)
        filling = lambda: self.clock.step(self.epoch, made[0] * workers + worker)
        docs = self._documents(consumer, consumers, rng, filling)
        if cfg.shuffle_buffer > 1:
            docs = wds.shuffle(cfg.shuffle_buffer, initial=cfg.shuffle_buffer, rng=rng)(docs)
        packer = Packer(cfg.seq_len, cfg.overlong, self.counters, open_rows=cfg.open_rows)
        counted = self.counts_per_batch
        if counted:
            self.counters.begin_marks()

        def out(rows: list) -> MultiModalBatch | tuple[MultiModalBatch, list[int]]:
            batch = self._collate(rows)
            return (batch, self.counters.mark()) if counted else batch

        rows: list = []
        for doc in docs:
            rows += packer.add(doc)
            if len(rows) >= cfg.batch_size:
                yield out(rows[: cfg.batch_size])
                made[0] += 1
                rows = rows[cfg.batch_size :]
        rows += packer.flush()
        for i in range(0, len(rows), cfg.batch_size):
            yield out(rows[i : i + cfg.batch_size])
        if counted:  # a finite stream's end: what was read after the last batch (documents skipped), no batch
            yield None, self.counters.mark()

    def _collate(self, rows: list) -> MultiModalBatch:
        if not self._tags:
            return one_storage(collate_rows(rows, self.config.seq_len, self.encoder.vocab))
        batch = collate_rows([[d.doc for d in row] for row in rows], self.config.seq_len, self.encoder.vocab)
        return one_storage(replace(batch, source_ids=source_ids(rows, self.config.seq_len)))

    def _consumer(self) -> tuple[int, int]:
        info = get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        return self.rank * workers + worker, self.world_size * workers

    # --- documents ------------------------------------------------------------
    def _documents(self, consumer: int, consumers: int, rng: random.Random,
                   filling: Callable[[], int]) -> Iterator[torch.Tensor | SourcedDoc]:
        """Documents in reading order; training ones drawn from the sources with the weights of step
        ``filling()`` (tagged with their source when batches carry ``source_ids``)."""
        streams = [self._source_docs(s, consumer, consumers) for s in self.sources]
        if not self.config.infinite:
            for stream in streams:
                yield from stream
            return
        indices = range(len(streams))
        while True:  # every source stream is infinite
            (i,) = rng.choices(indices, self.mix.at(filling()))
            doc = next(streams[i])
            yield SourcedDoc(doc, i) if self._tags else doc

    def _source_docs(self, source: ResolvedSource, consumer: int, consumers: int) -> Iterator[torch.Tensor]:
        part = share(source.sizes, len(source.urls), consumer, consumers)
        tar_counters = self.counters if part.counts_shard_events else NullCounters()
        passes = 0
        while True:
            urls = self._pass_order(source, part, passes)
            usable, shortest, reasons = 0, None, Counter()
            for index, sample in enumerate(shard_samples(urls, tar_counters, self.config.limits.max_member_bytes)):
                if index % part.group_size != part.member:
                    continue
                for doc in self._encode(sample, source, reasons):  # one, or a chunk of pre-tokenized ones
                    length = len(doc)
                    if length > self.config.seq_len and self.config.overlong == "skip":
                        shortest = length if shortest is None else min(shortest, length)
                        self.counters.add("too_long", detail=f"{length} tokens > seq_len {self.config.seq_len}")
                        reasons["too_long"] += 1
                        continue
                    usable += 1
                    yield doc
            passes += 1
            if not self.config.infinite:
                return
            if usable == 0:
                raise NoUsableDocument(self._why_nothing(source, part, consumer, consumers, shortest, reasons))

    def _why_nothing(self, source, part: Share, consumer: int, consumers: int, shortest, reasons) -> str:
        where = (f"source {source.name!r} ({len(part.shards)} of its {len(source.urls)} shards, "
                 f"consumer {consumer} of {consumers})")
        if shortest is not None and sum(reasons.values()) == reasons["too_long"]:
            return (f"{where}: no document fits seq_len {self.config.seq_len}: the shortest has {shortest} "
                    "tokens; raise data.seq_len or set data.loader.overlong: truncate")
        skipped = ", ".join(f"{k}={v}" for k, v in reasons.most_common()) or "no sample read"
        return (f"{where} yielded no usable document in a whole pass (skipped: {skipped}); check the shards "
                "with `mot data inspect` and the source's `modalities`")

    def _pass_order(self, source: ResolvedSource, part: Share, passes: int) -> list[str]:
        urls = [source.urls[i] for i in part.shards]
        if self.config.infinite:
            # one order per group: its members split the samples of that order by index
            random.Random(f"{self.config.seed}-{self.epoch}-{source.name}-{part.group}-{passes}").shuffle(urls)
        return urls

    def _encode(self, sample: dict, source: ResolvedSource, reasons: Counter) -> list[torch.Tensor]:
        """The sample's documents (none when skipped, many for a pre-tokenized chunk), counting skips."""
        try:
            items = contained(str(sample.get("__key__", "?")), lambda: self._items(sample, source))
        except BadSample as bad:
            items = [bad]
        docs = []
        for item in items:
            if isinstance(item, BadSample):
                self.counters.add(item.reason, detail=item.detail)
                reasons[item.reason] += 1
                continue
            doc, dropped = item
            if dropped:
                self.counters.add("dropped_segments", dropped)
            if doc is not None and self.config.require and not self._holds_required(doc):
                doc = None  # not a document of the required modalities: filtered, like one with nothing kept
            if doc is None:
                self.counters.add("filtered_docs")
                reasons["filtered_docs"] += 1
            else:
                docs.append(doc)
        return docs

    def _holds_required(self, doc: Doc) -> bool:
        """Whether the encoded document holds a token of a ``require`` modality (read off its joint ids)."""
        ids = doc.ids if isinstance(doc, LatentDoc) else doc
        held = self.encoder.vocab.modality_of(ids).unique().tolist()
        return any(Modality(m) in self.config.require for m in held)

    def _items(self, sample: dict, source: ResolvedSource) -> list:
        if self.pretokenized.holds(sample):
            return self.pretokenized.decode(sample, source.keep, self._drop_text)
        parsed = parse_sample(sample, source.keep, self.config.image_size, self.config.limits)
        doc = None
        if parsed.segments or not parsed.dropped:
            doc = self.encoder.encode(parsed, self._drop_text([s.modality for s in parsed.segments]))
        return [(doc, parsed.dropped)]

    def _drop_text(self, modalities: list[Modality]) -> bool:
        """Caption dropout for classifier-free guidance: training documents that hold an image."""
        p = self.config.caption_dropout
        if p <= 0 or not self.config.infinite or Modality.IMAGE not in modalities:
            return False
        return self._drop_rng.random() < p


@dataclass(frozen=True)
class SourcedDoc:
    """A document (``long[n]`` ids or ``LatentDoc``) and the index of its training source; packs like it."""

    doc: Doc
    source: int

    def __len__(self) -> int:
        return len(self.doc)

    def __getitem__(self, index: slice) -> SourcedDoc:
        return SourcedDoc(self.doc[index], self.source)


def source_ids(rows: list[list[SourcedDoc]], seq_len: int) -> torch.Tensor:
    """``long[B, T]``: the source index of each position's document, -1 for the padding after the last."""
    out = torch.full((len(rows), seq_len), -1, dtype=torch.long)  # (B, T)
    for b, row in enumerate(rows):
        lengths = torch.tensor([len(d) for d in row])
        ids = torch.repeat_interleave(torch.tensor([d.source for d in row]), lengths)  # (used,)
        out[b, : len(ids)] = ids
    return out


def one_storage(batch: MultiModalBatch) -> MultiModalBatch:
    """The same batch with its ``long[B, T]`` fields as views of one ``long[F, B, T]`` tensor: a worker
    hands the main process one shared-memory block per batch instead of one per field (the main
    process's share of a pre-tokenized stream's CPU time drops by about half)."""
    names = [f.name for f in fields(batch) if f.name != "latents" and getattr(batch, f.name) is not None]
    stacked = torch.stack([getattr(batch, name) for name in names])  # (F, B, T)
    return replace(batch, **dict(zip(names, stacked.unbind(0))))


def empty_batch(seq_len: int, encoder: DocumentEncoder) -> MultiModalBatch:
    """One row of padding and nothing to predict (``float[1, T, D]`` zero latents with latent images):
    what a rank whose validation share ran out runs while the others finish (``loaders.EqualBatches``)."""
    vocab = encoder.vocab
    tokens = torch.full((1, seq_len), vocab.pad_id, dtype=torch.long)  # (1, T)
    latents = span_ids = None
    if vocab.image_latent:
        latents = torch.zeros(1, seq_len, encoder.latent_dim)  # (1, T, D)
        span_ids = torch.full((1, seq_len), -1, dtype=torch.long)
    return MultiModalBatch(tokens=tokens, modality=vocab.modality_of(tokens), doc_ids=torch.zeros_like(tokens),
                           positions=torch.arange(seq_len)[None], targets=torch.full_like(tokens, IGNORE_INDEX),
                           latents=latents, span_ids=span_ids)
