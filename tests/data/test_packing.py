"""Packing invariants: every token of every document appears exactly once (or is counted)."""

from __future__ import annotations

import random

import pytest
import torch

from mot_lightning.data.batch import IGNORE_INDEX, MultiModalBatch
from mot_lightning.data.counters import StreamCounters
from mot_lightning.data.packing import Packer, collate_rows, pack_rows
from mot_lightning.data.vocab import JointVocab
from mot_lightning.modality import Modality

from .helpers import doc_mask, unpack_checked

VOCAB = JointVocab(text_size=50, image_size=20, speech_size=10)


def random_doc(rng: random.Random, max_len: int) -> torch.Tensor:
    """BOS, spans of text / BOI image EOI / BOS_SPEECH speech EOS_SPEECH, EOS (like DocumentEncoder)."""
    v = VOCAB
    pieces = [v.bos_id]
    while len(pieces) < rng.randint(2, max_len):
        kind = rng.choice(list(Modality))
        lo, hi = v.offset(kind), v.offset(kind) + {0: 50, 1: 20, 2: 10}[int(kind)]
        codes = [rng.randrange(lo, hi) for _ in range(rng.randint(1, 6))]
        bounds = {
            Modality.TEXT: ([], []),
            Modality.IMAGE: ([v.boi_id], [v.eoi_id]),
            Modality.SPEECH: ([v.bos_speech_id], [v.eos_speech_id]),
        }[kind]
        pieces += bounds[0] + codes + bounds[1]
    return torch.tensor(pieces + [v.eos_id])


def batches_of(rows, seq_len, batch_size=3):
    rows = list(rows)
    return [collate_rows(rows[i : i + batch_size], seq_len, VOCAB) for i in range(0, len(rows), batch_size)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_token_once_skip_overlong(seed):
    rng = random.Random(seed)
    seq_len = 24
    docs = [random_doc(rng, 30) for _ in range(200)]
    counters = StreamCounters()
    out = unpack_checked(batches_of(pack_rows(docs, Packer(seq_len, "skip", counters)), seq_len), VOCAB)
    kept = [d for d in docs if len(d) <= seq_len]
    assert len(kept) < len(docs), "the test must exercise over-long documents"
    assert [d.tolist() for d in out] == [d.tolist() for d in kept]  # order kept, nothing lost or doubled
    totals = counters.totals()
    assert totals["too_long"] == len(docs) - len(kept)
    assert totals["docs"] == len(kept) and totals["tokens"] == sum(map(len, kept))
    n_rows = sum(b.batch_size for b in batches_of(pack_rows(kept, Packer(seq_len)), seq_len))
    assert totals["tokens"] + totals["padding"] == n_rows * seq_len


@pytest.mark.parametrize("open_rows", [2, 4])
def test_first_fit_over_open_rows_keeps_every_token_and_pads_less(open_rows):
    rng = random.Random(5)
    seq_len = 32
    docs = [random_doc(rng, 20) for _ in range(300)]
    greedy, first_fit = StreamCounters(), StreamCounters()
    list(pack_rows(docs, Packer(seq_len, counters=greedy)))
    rows = list(pack_rows(docs, Packer(seq_len, counters=first_fit, open_rows=open_rows)))
    out = unpack_checked(batches_of(rows, seq_len), VOCAB)
    assert sorted(d.tolist() for d in out) == sorted(d.tolist() for d in docs)
    assert first_fit.totals()["padding"] < greedy.totals()["padding"]
    assert first_fit.totals()["padding"] + first_fit.totals()["tokens"] == len(rows) * seq_len


def test_truncate_counts_cut_tokens():
    rng = random.Random(3)
    seq_len = 16
    docs = [random_doc(rng, 40) for _ in range(100)]
    counters = StreamCounters()
    out = unpack_checked(batches_of(pack_rows(docs, Packer(seq_len, "truncate", counters)), seq_len), VOCAB)
    assert [d.tolist() for d in out] == [d[:seq_len].tolist() for d in docs]
    cut = sum(max(0, len(d) - seq_len) for d in docs)
    assert cut > 0
    totals = counters.totals()
    assert totals["truncated_tokens"] == cut
    assert totals["tokens"] + totals["truncated_tokens"] == sum(map(len, docs))


def test_no_document_attends_to_another():
    rng = random.Random(4)
    seq_len = 32
    docs = [random_doc(rng, 12) for _ in range(20)]
    rows = list(pack_rows(docs, Packer(seq_len)))
    batch = collate_rows(rows, seq_len, VOCAB)
    source = torch.full((batch.batch_size, seq_len), -1)  # which input document each position came from
    k = 0
    for b, row in enumerate(rows):
        at = 0
        for doc in row:
            source[b, at : at + len(doc)] = k
            k, at = k + 1, at + len(doc)
    assert k == len(docs) and batch.batch_size > 1
    for b in range(batch.batch_size):
        mask = doc_mask(batch.doc_ids[b])
        q, kv = torch.nonzero(mask, as_tuple=True)
        allowed = source[b, q] == source[b, kv]  # same input document (or both padding)
        assert allowed.all(), "a position may attend to another document"
        assert mask.any(dim=1).all(), "every row of the mask (padding included) attends somewhere"


def test_modality_and_loss_masks():
    v = VOCAB
    doc = torch.tensor(
        [
            v.bos_id,
            3,
            v.boi_id,
            v.image_offset + 1,
            v.image_offset + 2,
            v.eoi_id,
            v.bos_speech_id,
            v.speech_offset,
            v.eos_speech_id,
            v.eos_id,
        ]
    )
    batch = collate_rows([[doc]], 12, v)
    assert batch.modality[0].tolist() == [0, 0, 0, 1, 1, 0, 0, 2, 0, 0, 0, 0]
    assert batch.targets[0, -3:].tolist() == [IGNORE_INDEX] * 3  # last doc token + 2 padding
    image = batch.loss_mask(Modality.IMAGE)[0].nonzero().flatten().tolist()
    speech = batch.loss_mask(Modality.SPEECH)[0].nonzero().flatten().tolist()
    text = batch.loss_mask(Modality.TEXT)[0].nonzero().flatten().tolist()
    assert image == [2, 3]  # BOI predicts the 1st code, code 1 predicts code 2; code 2 -> EOI is text
    assert speech == [6]
    assert sorted(image + speech + text) == batch.loss_mask()[0].nonzero().flatten().tolist()
    assert batch.doc_ids[0].tolist() == [0] * 10 + [1, 1]


def test_batch_contract_and_device_moves():
    batch = collate_rows([[torch.tensor([VOCAB.bos_id, 1, VOCAB.eos_id])]], 5, VOCAB)
    moved = batch.to("cpu")
    assert isinstance(moved, MultiModalBatch) and torch.equal(moved.tokens, batch.tokens)
    with pytest.raises(ValueError, match="long"):
        MultiModalBatch(
            *(
                t.float() if i == 0 else t
                for i, t in enumerate(
                    (batch.tokens, batch.modality, batch.doc_ids, batch.positions, batch.targets)
                )
            )
        )
    from lightning.fabric.utilities.apply_func import move_data_to_device

    assert isinstance(move_data_to_device(batch, torch.device("cpu")), MultiModalBatch)


def test_vocab_layout():
    v = JointVocab(text_size=256, image_size=1024, speech_size=500)
    assert v.size == 256 + 7 + 1024 + 500
    ids = torch.tensor(
        [0, 255, v.pad_id, v.eos_speech_id, v.image_offset, v.speech_offset - 1, v.speech_offset, v.size - 1]
    )
    assert v.modality_of(ids).tolist() == [0, 0, 0, 0, 1, 1, 2, 2]
    assert torch.equal(
        v.to_local(v.to_joint(torch.arange(1024), Modality.IMAGE), Modality.IMAGE), torch.arange(1024)
    )
    with pytest.raises(ValueError, match="vocab_size"):
        v.to_joint(torch.tensor([1024]), Modality.IMAGE)
