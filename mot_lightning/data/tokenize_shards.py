"""``mot data tokenize``: raw shards -> pre-tokenized shards (``pretokenized.py``), once, offline.

    mot data tokenize --config configs/chameleon/mot.yaml --out data/pretokenized [--split train]
                      [--device cuda] [--batch-size 64] [--workers 2] [--shard-size 1024] [--chunk 16]
                      [--data.<key> ...]

The data module is built from the YAML's ``data`` section as ``mot fit`` builds it
(``--data.<key>`` overrides, later ``--config`` files win), missing tokenizers are
fitted (``prepare_data``), and each source of the split (``train``: the training
sources; a validation set's name: that set) is read by ``workers`` processes that
decode its documents. Images are encoded in batches of ``batch_size`` on ``device``
(the image tokenizer's ``encode_batch``: one VQ-VAE / KL-VAE forward per batch, on a
GPU when given); the other segments one by one through the same ``DocumentEncoder``
the stream uses, so a document's ids are exactly what training on the raw shard would
see (tested). Output: ``<out>/<split>/<source>/<source>-%06d.tar`` (samples of ``chunk``
consecutive documents, ``shard_size`` documents per shard) and a
``manifest.json``; the command prints the ``sources:`` / ``val_sets:`` YAML that
points at them, with ``tokenizer_files.files`` naming the fitted tokenizer files that
made them: a run on the new sources reads those files (fitted files are named by the
data they were fitted on, which the new sources are not). Documents are kept whatever
their length (``seq_len`` may change).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import webdataset as wds
import yaml
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mot_lightning.data.documents import BadSample, DecodeLimits, Document, parse_sample
from mot_lightning.data.encode import DocumentEncoder
from mot_lightning.data.packing import LatentDoc
from mot_lightning.data.pretokenized import fingerprints, pack_documents
from mot_lightning.data.sources import SourceConfig, resolve
from mot_lightning.modality import Modality
from mot_lightning.shards.reader import shard_samples
from mot_lightning.tokenizers.base import ContinuousTokenizer, DiscreteTokenizer, Tokenizer


# --- reading: documents decoded in worker processes ---------------------------------
class _Decoded(IterableDataset):
    """(key, Document) or (key, skip reason) per sample; worker ``w`` reads shards ``w::workers``."""

    def __init__(self, urls: tuple[str, ...], keep: frozenset[Modality], image_size: int,
                 limits: DecodeLimits) -> None:
        self.urls, self.keep, self.image_size, self.limits = urls, keep, image_size, limits

    def __iter__(self) -> Iterator[tuple[str, Document | str]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        events = _Events()
        for sample in shard_samples(self.urls[worker::workers], events):
            yield from events.drain()
            key = str(sample.get("__key__", "?"))
            try:
                yield key, parse_sample(sample, self.keep, self.image_size, self.limits)
            except BadSample as bad:
                yield key, bad.reason
        yield from events.drain()


class _Events:
    """The shard reader's counts, handed on as (``""``, reason) items."""

    def __init__(self) -> None:
        self.pending: list[str] = []

    def add(self, name: str, n: int = 1, detail: str = "") -> None:
        self.pending += [name] * n

    def drain(self) -> Iterator[tuple[str, str]]:
        while self.pending:
            yield "", self.pending.pop()


# --- encoding: images in batches ------------------------------------------------------
class _Precomputed:
    """An image tokenizer whose ``encode(raw)`` returns what ``encode_batch`` computed for ``raw`` (by
    identity) in the current batch, so ``DocumentEncoder`` lays out batched encodings as its own."""

    def __init__(self, inner: Tokenizer) -> None:
        self.inner, self.modality, self.results = inner, inner.modality, {}

    def encode(self, raw: torch.Tensor) -> torch.Tensor:
        return self.results[id(raw)]  # the same tensor may be a segment twice: same encoding

    def decode(self, encoded: torch.Tensor):
        return self.inner.decode(encoded)

    def num_tokens(self, raw) -> int:
        return self.inner.num_tokens(raw)

    def save(self, path: str) -> None:
        raise TypeError("a batching wrapper is never saved")

    @classmethod
    def load(cls, path: str):
        raise TypeError("a batching wrapper is never loaded")


class _PrecomputedCodes(_Precomputed, DiscreteTokenizer):
    @property
    def vocab_size(self) -> int:
        return self.inner.vocab_size

    @property
    def special_tokens(self) -> dict[str, int]:
        return self.inner.special_tokens


class _PrecomputedLatents(_Precomputed, ContinuousTokenizer):
    @property
    def latent_dim(self) -> int:
        return self.inner.latent_dim


@dataclass
class Tokenized:
    """What one source gave: documents written, skips by reason, shard files."""

    docs: int = 0
    skipped: Counter = field(default_factory=Counter)
    shards: list[str] = field(default_factory=list)


class BatchEncoder:
    """Encodes documents; with ``batch_size > 1`` and an image tokenizer that has ``encode_batch``, the
    images of a batch of documents go through it in one call on ``device``."""

    def __init__(self, encoder: DocumentEncoder, batch_size: int = 1, device: str = "cpu") -> None:
        self.encoder, self.batch_size = encoder, batch_size
        image = encoder.tokenizers[Modality.IMAGE]
        self.image = image if batch_size > 1 and hasattr(image, "encode_batch") else None
        self.batched = encoder
        if self.image is not None:
            if hasattr(self.image, "to"):
                self.image.to(device)
            wrap = _PrecomputedLatents if isinstance(image, ContinuousTokenizer) else _PrecomputedCodes
            t = encoder.tokenizers
            self.batched = DocumentEncoder(t[Modality.TEXT], wrap(image), t[Modality.SPEECH])
            if self.batched.vocab != encoder.vocab:
                raise AssertionError("the batching wrapper must not change the joint vocabulary")

    def encode(self, docs: list[Document]) -> list[tuple[object, list[tuple[Modality, int]]] | str]:
        """Per document: (encoded ``long[n]`` or ``LatentDoc``, its pieces) or a skip reason."""
        if self.image is not None:
            images = [s.value for d in docs for s in d.segments if s.modality == Modality.IMAGE]
            if images:
                with torch.no_grad():
                    encoded = self.image.encode_batch(torch.stack(images))  # (B, n) or (B, n, D)
                self.batched.tokenizers[Modality.IMAGE].results = {id(x): e for x, e in zip(images, encoded)}
        out = [self._one(doc) for doc in docs]
        if self.image is not None:
            self.batched.tokenizers[Modality.IMAGE].results = {}  # ids are only valid while images live
        return out

    def _one(self, doc: Document):
        pieces, modalities = [], []
        for seg in doc.segments:  # each segment alone: BOS piece EOS, so its piece is ids[1:-1]
            try:
                one = self.batched.encode(Document(doc.key, [seg]))
            except BadSample:  # a segment without tokens (empty text): encode leaves it out too
                continue
            pieces.append(one[1:-1])
            modalities.append(seg.modality)
        if not pieces:
            return "empty_doc"
        v = self.encoder.vocab
        ends = [torch.tensor([v.bos_id]), torch.tensor([v.eos_id])]
        if isinstance(pieces[0], LatentDoc):
            zero = torch.zeros(1, self.encoder.latent_dim)
            doc_ids = torch.cat([ends[0], *(p.ids for p in pieces), ends[1]])
            out = LatentDoc(doc_ids, torch.cat([zero, *(p.latents for p in pieces), zero]))
        else:
            out = torch.cat([ends[0], *pieces, ends[1]])
        return out, [(m, len(p)) for m, p in zip(modalities, pieces)]


# --- writing -----------------------------------------------------------------------------
def _as_is(item):
    return item


def tokenize_source(source: SourceConfig, encoder: DocumentEncoder, keep: frozenset[Modality], out_dir: str,
                    image_size: int, limits: DecodeLimits, stamp: dict[str, str], batch_size: int = 64,
                    workers: int = 2, device: str = "cpu", shard_size: int = 1024, chunk: int = 16) -> Tokenized:
    """Write ``<out_dir>/<source>-%06d.tar`` of pre-tokenized documents for one source: samples of ``chunk``
    consecutive documents, about ``shard_size`` documents per shard."""
    resolved = resolve(source, keep)
    os.makedirs(out_dir, exist_ok=True)
    result = Tokenized()
    batcher = BatchEncoder(encoder, batch_size, device)
    loader = DataLoader(_Decoded(resolved.urls, resolved.keep, image_size, limits), batch_size=None,
                        num_workers=min(workers, len(resolved.urls)), collate_fn=_as_is)
    pattern = os.path.join(out_dir, f"{source.name}-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=max(1, shard_size // chunk), verbose=0, mtime=0,
                         post=result.shards.append) as sink:
        chunks = _Chunks(sink, chunk, stamp, encoder, result)
        pending: list[tuple[str, Document]] = []
        for key, item in loader:
            if isinstance(item, str):
                result.skipped[item] += 1
                continue
            pending.append((key, item))
            if len(pending) >= batch_size:
                chunks.add(pending, batcher.encode([doc for _, doc in pending]))
                pending = []
        chunks.add(pending, batcher.encode([doc for _, doc in pending]))
        chunks.flush()
    return result


class _Chunks:
    """Groups encoded documents into samples of ``size`` documents (keyed by their first document)."""

    def __init__(self, sink, size: int, stamp: dict[str, str], encoder: DocumentEncoder, result: Tokenized) -> None:
        self.sink, self.size, self.stamp, self.encoder, self.result = sink, size, stamp, encoder, result
        self.buffer: list[tuple[str, object, list]] = []

    def add(self, pending: list, encoded: list) -> None:
        for (key, _), item in zip(pending, encoded):
            if isinstance(item, str):
                self.result.skipped[item] += 1
                continue
            self.buffer.append((key, *item))
            if len(self.buffer) == self.size:
                self.flush()

    def flush(self) -> None:
        if self.buffer:
            members = pack_documents([(doc, pieces) for _, doc, pieces in self.buffer], self.stamp,
                                     self.encoder.vocab)
            self.sink.write({"__key__": self.buffer[0][0], **members})
            self.result.docs += len(self.buffer)
            self.buffer = []


# --- the command -----------------------------------------------------------------------
def _parser():
    from jsonargparse import ActionConfigFile, ArgumentParser

    from mot_lightning.data.datamodule import MultiModalDataModule

    parser = ArgumentParser(prog="mot data tokenize", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action=ActionConfigFile, help="a training YAML (only `data:` is read)")
    parser.add_class_arguments(MultiModalDataModule, "data")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--split", default="train", help="`train` or a validation set's name")
    parser.add_argument("--device", default="cpu", help="where the image tokenizer runs (e.g. cuda)")
    parser.add_argument("--batch_size", "--batch-size", type=int, default=64, help="images per encode call")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes")
    parser.add_argument("--shard_size", "--shard-size", type=int, default=1024, help="documents per shard")
    parser.add_argument("--chunk", type=int, default=16, help="documents per sample (one array each)")
    return parser


def _data_only(argv: list[str], folder: str) -> list[str]:
    """``--config X.yaml`` -> a copy holding only its ``data:`` section (the rest is for ``mot fit``)."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--config" and i + 1 < len(argv):
            with open(argv[i + 1]) as fh:
                doc = yaml.safe_load(fh) or {}
            path = os.path.join(folder, f"data-{i}.yaml")
            with open(path, "w") as fh:
                yaml.safe_dump({"data": doc.get("data", {})}, fh)
            out += ["--config", path]
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def parse(argv: list[str]):
    """(the data module built from ``argv`` as ``mot fit`` builds it, the parsed arguments)."""
    with tempfile.TemporaryDirectory() as folder:
        parser = _parser()
        cfg = parser.parse_args(_data_only(argv, folder))
        instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # its name < 4.49
        return instantiate(cfg).data, cfg


def tokenize_split(dm, out: str, split: str = "train", batch_size: int = 64, workers: int = 2,
                   device: str = "cpu", shard_size: int = 1024, chunk: int = 16) -> dict:
    """Pre-tokenize every source of ``split`` into ``<out>/<split>/``; returns (and writes) the manifest."""
    dm.prepare_data()  # fits missing tokenizers
    dm.setup("validate")  # loads them
    stamp = fingerprints(dm.encoder, dm.image_size)
    split_dir = os.path.join(out, split)
    files = {label: entry["file"] for label, entry in dm.tokenizer_stamp().items() if entry["file"]}
    manifest = {"split": split, "fingerprint": stamp, "tokenizer_files": files, "sources": {}}
    for source in dm.split_sources(split):
        start = time.perf_counter()
        got = tokenize_source(source, dm.encoder, dm.kept, os.path.join(split_dir, source.name), dm.image_size,
                              dm.decode_limits(), stamp, batch_size, workers, device, shard_size, chunk)
        seconds = time.perf_counter() - start
        pattern = os.path.join(split_dir, source.name, f"{source.name}-{{000000..{len(got.shards) - 1:06d}}}.tar")
        manifest["sources"][source.name] = {
            "docs": got.docs, "skipped": dict(got.skipped), "seconds": round(seconds, 1),
            "config": {"name": source.name, "urls": pattern, "weight": source.weight,
                       "modalities": list(source.modalities)}}
        skipped = ", ".join(f"{k}={v}" for k, v in got.skipped.items()) or "none"
        print(f"{source.name}: {got.docs} documents in {len(got.shards)} shards ({seconds:.1f} s), skipped: {skipped}",
              flush=True)
    with open(os.path.join(split_dir, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1)
    return manifest


def main(argv: list[str]) -> None:
    dm, cfg = parse(argv)
    manifest = tokenize_split(dm, cfg.out, cfg.split, cfg.batch_size, cfg.workers, cfg.device, cfg.shard_size,
                              cfg.chunk)
    key = "sources" if cfg.split == "train" else "val_sets"
    data = {key: [info["config"] for info in manifest["sources"].values()]}
    if manifest["tokenizer_files"]:  # the fitted files that made the shards, whatever data they are named by
        data["tokenizer_files"] = {"files": manifest["tokenizer_files"]}
    print("\nin the training YAML (raw and pre-tokenized sources mix freely):\n"
          + yaml.safe_dump({"data": data}, sort_keys=False, default_flow_style=None))
