"""Packing tokenized documents into fixed-length rows, and rows into a ``MultiModalBatch``.

First fit over a few open rows: a document goes into the first open row with
room for it whole; when none has room, the fullest open row is closed (padded)
if ``open_rows`` are already open, and the document starts a new row. With
``open_rows=1`` this is plain greedy packing in document order; more open
rows waste less padding on short documents. Documents never cross rows, so no
document's tokens are split and none can attend to another's (each gets its
own ``doc_ids`` value). A document longer than ``seq_len`` is skipped
(``overlong="skip"``, counted ``too_long``) or cut to ``seq_len`` tokens
(``overlong="truncate"``, the cut tokens counted as ``truncated_tokens``).

``collate_prompts`` builds generation prompts (``DocumentEncoder.encode_prompt``)
into a batch with the same row code, padded on the left so that every prompt
ends in the last column, where generation continues.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from mot_lightning.data.batch import IGNORE_INDEX, MultiModalBatch
from mot_lightning.data.counters import StreamCounters
from mot_lightning.data.vocab import JointVocab

OVERLONG_POLICIES = ("skip", "truncate")


@dataclass
class LatentDoc:
    """A tokenized document with continuous images (``DocumentEncoder`` with a latent image tokenizer).

    ``ids``: ``long[n]`` joint ids, ``vocab.latent_id`` at every latent-patch position;
    ``latents``: ``float[n, D]`` the patch at those positions, zero rows elsewhere.
    Packs like a plain ``long[n]`` document (length and slicing).
    """

    ids: torch.Tensor
    latents: torch.Tensor

    def __post_init__(self) -> None:
        if self.latents.dim() != 2 or len(self.latents) != len(self.ids):
            raise ValueError(f"LatentDoc latents must be float[{len(self.ids)}, D], got {tuple(self.latents.shape)}")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: slice) -> LatentDoc:
        return LatentDoc(self.ids[index], self.latents[index])


Doc = torch.Tensor | LatentDoc


class Packer:
    """Streams documents (``long[n]`` joint ids) into rows (lists of documents) of ``<= seq_len`` tokens."""

    def __init__(
        self, seq_len: int, overlong: str = "skip", counters: StreamCounters | None = None, open_rows: int = 1
    ) -> None:
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {seq_len}")
        if overlong not in OVERLONG_POLICIES:
            raise ValueError(f"overlong must be one of {OVERLONG_POLICIES}, got {overlong!r}")
        if open_rows < 1:
            raise ValueError(f"open_rows must be >= 1, got {open_rows}")
        self.seq_len, self.overlong, self.open_rows = seq_len, overlong, open_rows
        self.counters = counters or StreamCounters()
        self._rows: list[list[Doc]] = []  # open rows
        self._used: list[int] = []  # tokens in each open row

    def add(self, doc: Doc) -> list[list[Doc]]:
        """Add one document; return the rows this closed (zero or one)."""
        doc = self._fit(doc)
        if doc is None:
            return []
        self.counters.add("docs")
        self.counters.add("tokens", len(doc))
        for i, used in enumerate(self._used):
            if used + len(doc) <= self.seq_len:
                self._rows[i].append(doc)
                self._used[i] += len(doc)
                return []
        closed = [self._close(self._used.index(max(self._used)))] if len(self._rows) == self.open_rows else []
        self._rows.append([doc])
        self._used.append(len(doc))
        return closed

    def flush(self) -> list[list[Doc]]:
        """Close every open row (end of a finite stream)."""
        return [self._close(0) for _ in range(len(self._rows))]

    def _fit(self, doc: Doc) -> Doc | None:
        if len(doc) == 0:
            self.counters.add("empty_doc", detail="document with no tokens")
            return None
        if len(doc) <= self.seq_len:
            return doc
        if self.overlong == "skip":
            self.counters.add("too_long", detail=f"{len(doc)} tokens > seq_len {self.seq_len}")
            return None
        self.counters.add("truncated_docs")
        self.counters.add("truncated_tokens", len(doc) - self.seq_len)
        return doc[: self.seq_len]

    def _close(self, i: int) -> list[Doc]:
        row, used = self._rows.pop(i), self._used.pop(i)
        self.counters.add("padding", self.seq_len - used)
        return row


def pack_rows(
    docs: Iterable[Doc], packer: Packer, flush: bool = True
) -> Iterator[list[Doc]]:
    """Rows from a stream of documents (closing the last partial row when ``flush``)."""
    for doc in docs:
        yield from packer.add(doc)
    if flush:
        yield from packer.flush()


def collate_rows(rows: list[list[Doc]], seq_len: int, vocab: JointVocab) -> MultiModalBatch:
    """Rows of documents -> one ``MultiModalBatch`` of shape ``[len(rows), seq_len]``.

    With a latent-image vocabulary (every document a ``LatentDoc``) the batch also
    carries ``latents`` and ``span_ids`` (one span per contiguous run of latent
    positions), and a latent position is never a next-token target: images are
    trained by the diffusion loss (the ``EOI`` after an image stays a text target).
    """
    return _collate(rows, seq_len, vocab, pad_left=False)


def collate_prompts(prompts: Sequence[Doc], vocab: JointVocab) -> MultiModalBatch:
    """Prompts (one document each) -> a ``MultiModalBatch`` of shape ``[len(prompts), longest prompt]``.

    Rows are built as ``collate_rows`` builds them, but the padding comes first, so every prompt ends in
    the last column: the padding is its own document (id 0, the prompt then id 1), positions restart at
    the prompt, and latent images get their ``latents`` and ``span_ids``. A row without padding is
    exactly ``collate_rows([[prompt]], len(prompt), vocab)``.
    """
    if not prompts:
        raise ValueError("collate_prompts needs at least one prompt")
    return _collate([[p] for p in prompts], max(len(p) for p in prompts), vocab, pad_left=True)


def _collate(rows: list[list[Doc]], seq_len: int, vocab: JointVocab, pad_left: bool) -> MultiModalBatch:
    id_rows = [[d.ids if isinstance(d, LatentDoc) else d for d in row] for row in rows]
    parts = [_row_tensors(row, seq_len, vocab.pad_id, pad_left) for row in id_rows]
    tokens, doc_ids, positions, targets = (torch.stack(field) for field in zip(*parts))  # each (B, T)
    latents = span_ids = None
    if vocab.image_latent:
        is_latent = tokens == vocab.latent_id  # (B, T)
        targets = targets.masked_fill(targets == vocab.latent_id, IGNORE_INDEX)
        latents = torch.stack([_row_latents(row, seq_len, pad_left) for row in rows])  # (B, T, D)
        starts = is_latent & ~torch.nn.functional.pad(is_latent, (1, 0))[:, :-1]  # first patch of each image
        span_ids = torch.where(is_latent, starts.long().cumsum(dim=1) - 1, -1)
    return MultiModalBatch(
        tokens=tokens,
        modality=vocab.modality_of(tokens),
        doc_ids=doc_ids,
        positions=positions,
        targets=targets,
        latents=latents,
        span_ids=span_ids,
    )


def _row_latents(row: list[Doc], seq_len: int, pad_left: bool) -> torch.Tensor:
    if not all(isinstance(d, LatentDoc) for d in row):
        raise TypeError("a latent-image vocabulary needs every document as a LatentDoc (DocumentEncoder makes them)")
    lat = torch.cat([d.latents.float() for d in row])  # (used, D)
    pad = seq_len - len(lat)
    return torch.nn.functional.pad(lat, (0, 0, pad, 0) if pad_left else (0, 0, 0, pad))


def _row_tensors(row: list[torch.Tensor], seq_len: int, pad_id: int,
                 pad_left: bool) -> tuple[torch.Tensor, ...]:
    pad = seq_len - sum(len(d) for d in row)
    if pad < 0:
        raise ValueError(f"row holds {seq_len - pad} tokens > seq_len {seq_len}")
    padding = [torch.full((pad,), pad_id, dtype=torch.long)] if pad else []  # its own document
    docs = [*padding, *row] if pad_left else [*row, *padding]
    spans = [len(d) for d in docs]
    tokens = torch.cat(docs)  # (T,)
    doc_ids = torch.repeat_interleave(torch.arange(len(spans)), torch.tensor(spans))  # (T,)
    positions = torch.cat([torch.arange(n) for n in spans])  # (T,) restart per document
    no_targets = [torch.full((pad,), IGNORE_INDEX)] if pad else []
    doc_targets = [_doc_targets(d) for d in row]
    targets = torch.cat([*no_targets, *doc_targets] if pad_left else [*doc_targets, *no_targets])  # (T,)
    return tokens, doc_ids, positions, targets.long()


def _doc_targets(doc: torch.Tensor) -> torch.Tensor:
    """Next token inside the document; the last token has none."""
    return torch.cat([doc[1:], doc.new_full((1,), IGNORE_INDEX)])
