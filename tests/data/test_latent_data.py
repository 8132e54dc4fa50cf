"""Continuous-image documents (Transfusion): encoding, packing into latents/span_ids, caption dropout, masks."""
from __future__ import annotations

import random

import pytest
import torch

from mot_lightning.data.counters import StreamCounters
from mot_lightning.data.documents import Document, Segment
from mot_lightning.data.encode import DocumentEncoder
from mot_lightning.data.packing import LatentDoc, Packer, collate_rows, pack_rows
from mot_lightning.data.stream import PackedStream, ResolvedSource, StreamConfig
from mot_lightning.modality import Modality
from mot_lightning.model.masks import build_mask_mod, dense_mask
from mot_lightning.tokenizers import KLVAEConfig, LatentImageTokenizer
from mot_lightning.tokenizers.fitting import TrainConfig
from mot_lightning.tokenizers.text import ByteTokenizer

from .helpers import png_bytes, write_tar

CONFIG = KLVAEConfig(resolution=16, downsample=4, channels=8, res_blocks=0, latent_channels=2, patch_size=2)


@pytest.fixture(scope="module")
def latent_tok(tmp_path_factory) -> LatentImageTokenizer:
    """A real KL-VAE, fitted for a few steps on random images (its weights do not matter here)."""
    images = [torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(16)]
    tok = LatentImageTokenizer(CONFIG)
    log_dir = str(tmp_path_factory.mktemp("klvae"))
    tok.fit(images, TrainConfig(max_steps=3, batch_size=8, accelerator="cpu", progress_bar=False, log_dir=log_dir,
                                val_every_n_steps=1000))
    return tok


def _image(seed: int) -> torch.Tensor:
    return torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(100 + seed))


def _doc(key: str, *parts) -> Document:
    segs = [Segment(Modality.TEXT, p) if isinstance(p, str) else Segment(Modality.IMAGE, p) for p in parts]
    return Document(key, segs)


def test_latent_vocab_and_document_layout(latent_tok):
    enc = DocumentEncoder(ByteTokenizer(), latent_tok)
    v = enc.vocab
    assert v.image_latent and v.image_size == 1 and enc.latent_dim == CONFIG.latent_dim == 8
    assert int(v.modality_of(torch.tensor([v.latent_id]))) == Modality.IMAGE
    img = _image(0)
    doc = enc.encode(_doc("a", "hi", img, "yo"))
    n = CONFIG.patches_per_image  # 4
    assert isinstance(doc, LatentDoc)
    expected = [v.bos_id, *b"hi", v.boi_id, *[v.latent_id] * n, v.eoi_id, *b"yo", v.eos_id]
    assert doc.ids.tolist() == expected
    lat_rows = doc.ids == v.latent_id
    torch.testing.assert_close(doc.latents[lat_rows], latent_tok.encode(img))  # the patches, in order
    assert not doc.latents[~lat_rows].any()  # zero rows everywhere else
    # drop_text (caption dropout) keeps exactly the unconditional layout BOS BOI image EOI EOS
    dropped = enc.encode(_doc("a", "hi", img, "yo"), drop_text=True)
    assert dropped.ids.tolist() == [v.bos_id, v.boi_id, *[v.latent_id] * n, v.eoi_id, v.eos_id]


def test_packing_latents_nothing_lost_and_span_ids(latent_tok):
    enc = DocumentEncoder(ByteTokenizer(), latent_tok)
    v, n = enc.vocab, CONFIG.patches_per_image
    rng = random.Random(0)
    docs = []
    for i in range(30):
        parts = [rng.choice(["a cat", "two red dots", "x"]) if rng.random() < 0.6 else _image(i)
                 for _ in range(rng.randint(1, 4))]
        docs.append(enc.encode(_doc(str(i), *parts)))
    seq_len = 40
    rows = list(pack_rows(docs, Packer(seq_len, "skip", open_rows=3)))
    batch = collate_rows(rows, seq_len, v)
    assert batch.latents.shape == (len(rows), seq_len, 8) and batch.span_ids.shape == (len(rows), seq_len)
    kept = [d for d in docs if len(d) <= seq_len]
    # every kept document's ids and latents appear once, in its row, at its doc id
    seen = 0
    for b, row in enumerate(rows):
        for d_idx, doc in enumerate(row):
            where = batch.doc_ids[b] == d_idx
            assert batch.tokens[b, where].tolist() == doc.ids.tolist()
            torch.testing.assert_close(batch.latents[b, where], doc.latents)
            seen += 1
    assert seen == len(kept)
    # span ids: one per contiguous image, numbered 0.. per row, -1 elsewhere; exactly the latent positions
    is_lat = batch.tokens == v.latent_id
    assert torch.equal(batch.span_ids >= 0, is_lat)
    for b in range(len(rows)):
        spans = batch.span_ids[b][is_lat[b]]
        assert spans.tolist() == sorted(spans.tolist())
        assert all(int((spans == s).sum()) == n for s in spans.unique())  # each span is one whole image
    # no latent position is a next-token target; EOI after an image still is
    assert not (batch.targets == v.latent_id).any()
    assert (batch.targets == v.eoi_id).sum() == (batch.tokens == v.eoi_id).sum()
    assert torch.equal(batch.latent_mask(), is_lat)


def test_mask_within_image_bidirectional_causal_between_segments(latent_tok):
    """Must-show: inside an image every latent sees every other latent of it; nothing sees a later segment;
    text after an image sees the whole image (the mask the backbone builds from the batch's ids)."""
    enc = DocumentEncoder(ByteTokenizer(), latent_tok)
    v = enc.vocab
    docs = [enc.encode(_doc("a", "ab", _image(1), "cd", _image(2), "e")), enc.encode(_doc("b", _image(3), "f"))]
    batch = collate_rows([docs], 48, v)
    T = batch.seq_len
    allowed = dense_mask(build_mask_mod(doc_ids=batch.doc_ids, span_ids=batch.span_ids), 1, T, "cpu")[0, 0]
    span, doc = batch.span_ids[0], batch.doc_ids[0]
    # segment index of each position: a new segment at each document start and at each image start/end
    boundary = torch.zeros(T, dtype=torch.long)
    boundary[1:] = ((span[1:] != span[:-1]) | (doc[1:] != doc[:-1])).long()
    segment = boundary.cumsum(0)
    for q in range(T):
        for k in range(T):
            same_doc = bool(doc[q] == doc[k])
            if span[q] >= 0 and span[q] == span[k]:
                assert allowed[q, k], "latents of one image must see each other"
            elif not same_doc:
                assert not allowed[q, k], "documents never see each other"
            else:
                assert bool(allowed[q, k]) == (k <= q), "plain causal outside an image"
            if allowed[q, k]:
                assert segment[k] <= segment[q], "nothing sees a later segment"
    # text after the first image sees all of it
    first = (span == 0).nonzero().flatten()
    after = int(first[-1]) + 2  # EOI, then the first text byte
    assert allowed[after, first].all()


def _docs_without_text(batch, vocab) -> list[bool]:
    """For each document (BOS .. EOS) in the batch: does it hold no text byte (caption dropped)?"""
    out = []
    for b in range(batch.batch_size):
        for d in batch.doc_ids[b].unique():
            ids = batch.tokens[b, batch.doc_ids[b] == d]
            if int(ids[0]) == vocab.bos_id:  # not the padding span
                out.append(not bool((ids < vocab.text_size).any()))
    return out


def test_caption_dropout_is_seeded_training_only_and_near_p(latent_tok, tmp_path):
    """Stream-level caption dropout over real shards: deterministic per (seed, epoch), about p of the
    documents that hold an image, never in validation."""
    samples = [{"__key__": f"{i:04d}", "png": png_bytes(i, 16), "txt": b"a caption"} for i in range(60)]
    url = write_tar(str(tmp_path / "pairs-000.tar"), samples)
    enc = DocumentEncoder(ByteTokenizer(), latent_tok)
    source = ResolvedSource("pairs", (url,), 1.0, frozenset(Modality))

    def drops(infinite: bool, epoch: int = 0, batches: int = 40) -> list[bool]:
        cfg = StreamConfig(seq_len=64, batch_size=4, image_size=16, infinite=infinite, caption_dropout=0.3)
        stream = PackedStream([source], enc, cfg, StreamCounters())
        stream.set_epoch(epoch)
        out = []
        for batch, _ in zip(stream, range(batches)):
            out += _docs_without_text(batch, enc.vocab)
        return out

    a, b, c = drops(True), drops(True), drops(True, epoch=1)
    assert len(a) > 300
    assert a == b and a != c
    assert 0.22 < sum(a) / len(a) < 0.38
    val = drops(False)
    assert len(val) == 60 and not any(val)
