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
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from mot_lightning.data.batch import IGNORE_INDEX, MultiModalBatch
from mot_lightning.data.counters import StreamCounters
from mot_lightning.data.vocab import JointVocab

OVERLONG_POLICIES = ("skip", "truncate")


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
        self._rows: list[list[torch.Tensor]] = []  # open rows
        self._used: list[int] = []  # tokens in each open row

    def add(self, doc: torch.Tensor) -> list[list[torch.Tensor]]:
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

    def flush(self) -> list[list[torch.Tensor]]:
        """Close every open row (end of a finite stream)."""
        return [self._close(0) for _ in range(len(self._rows))]

    def _fit(self, doc: torch.Tensor) -> torch.Tensor | None:
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

    def _close(self, i: int) -> list[torch.Tensor]:
        row, used = self._rows.pop(i), self._used.pop(i)
        self.counters.add("padding", self.seq_len - used)
        return row


def pack_rows(
    docs: Iterable[torch.Tensor], packer: Packer, flush: bool = True
) -> Iterator[list[torch.Tensor]]:
    """Rows from a stream of documents (closing the last partial row when ``flush``)."""
    for doc in docs:
        yield from packer.add(doc)
    if flush:
        yield from packer.flush()


def collate_rows(rows: list[list[torch.Tensor]], seq_len: int, vocab: JointVocab) -> MultiModalBatch:
    """Rows of documents -> one ``MultiModalBatch`` of shape ``[len(rows), seq_len]``."""
    parts = [_row_tensors(row, seq_len, vocab.pad_id) for row in rows]
    tokens, doc_ids, positions, targets = (torch.stack(field) for field in zip(*parts))  # each (B, T)
    return MultiModalBatch(
        tokens=tokens,
        modality=vocab.modality_of(tokens),
        doc_ids=doc_ids,
        positions=positions,
        targets=targets,
    )


def _row_tensors(row: list[torch.Tensor], seq_len: int, pad_id: int) -> tuple[torch.Tensor, ...]:
    pad = seq_len - sum(len(d) for d in row)
    if pad < 0:
        raise ValueError(f"row holds {seq_len - pad} tokens > seq_len {seq_len}")
    spans = [len(d) for d in row] + ([pad] if pad else [])
    tokens = torch.cat([*row, torch.full((pad,), pad_id, dtype=torch.long)])  # (T,)
    doc_ids = torch.repeat_interleave(torch.arange(len(spans)), torch.tensor(spans))  # (T,) padding = own id
    positions = torch.cat([torch.arange(n) for n in spans])  # (T,) restart per document
    targets = torch.cat([_doc_targets(d) for d in row] + [torch.full((pad,), IGNORE_INDEX)])  # (T,)
    return tokens, doc_ids, positions, targets.long()


def _doc_targets(doc: torch.Tensor) -> torch.Tensor:
    """Next token inside the document; the last token has none."""
    return torch.cat([doc[1:], doc.new_full((1,), IGNORE_INDEX)])
