"""Streaming shards -> packed batches: nothing lost or doubled, bad samples counted, modality filters."""

from __future__ import annotations

import io
import os
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from mot_lightning.data.documents import parse_sample
from mot_lightning.data.sources import SourceConfig
from mot_lightning.modality import Modality

from .helpers import (
    interleaved,
    make_datamodule,
    mixed_corpus,
    png_bytes,
    text_of,
    unpack_checked,
    wav_bytes,
    write_tar,
)


def read_val(dm, name=None):
    dm.setup("validate")
    loaders = dict(zip(dm.val_set_names, dm.val_dataloader()))
    return [b for b in loaders[name or dm.val_set_names[0]]]


def test_stream_yields_every_document_exactly_once(tmp_path):
    samples = mixed_corpus(tmp_path, n=24, shards=4)
    dm = make_datamodule(
        tmp_path,
        [SourceConfig("all", str(tmp_path / "mixed-{000000..000003}.tar"))],
        val_sets=[SourceConfig("all", str(tmp_path / "*.tar"))],
    )
    docs = unpack_checked(read_val(dm), dm.vocab)
    keep = frozenset(Modality)
    expected = [dm.encoder.encode(parse_sample(s, keep, dm.image_size)) for s in samples]
    assert Counter(tuple(d.tolist()) for d in docs) == Counter(tuple(d.tolist()) for d in expected)
    stats = dm.stream_stats()["all"]
    assert stats["docs"] == 24 and sum(dm.skip_counts("val").values()) == 0
    assert stats["tokens"] == sum(len(d) for d in expected)


def bad_corpus(root):
    """Shards with one of every problem; returns the tags of the documents that must survive."""
    seg = lambda m, v: (m, v)
    shard0 = [
        {"__key__": "good0", "txt": b"good-000 text"},
        {"__key__": "badimg", "png": b"definitely not a png", "txt": b"lost"},
        {"__key__": "badwav", "wav": b"RIFF\x00\x00garbage", "txt": b"lost"},
        {"__key__": "nofile", "json": b'{"segments": [{"modality": "image", "file": "img0.png"}]}'},
        {"__key__": "nocaption", "png": png_bytes(1)},
        {"__key__": "badjson", "json": b'{"segments": [oops'},
        {"__key__": "noseg", "json": b'{"text": "no segments key"}'},
        {"__key__": "video", "json": b'{"segments": [{"modality": "video", "file": "v.mp4"}]}'},
        {"__key__": "empty", "txt": b""},
        {"__key__": "long", "txt": b"x" * 500},
        {"__key__": "label", "cls": b"3"},
        {"__key__": "latin1", "txt": "caf\u00e9 cr\u00e8me".encode("latin-1")},  # not UTF-8
        interleaved(
            "good1", [seg("text", "good-001"), seg("image", png_bytes(2)), seg("speech", wav_bytes(3))]
        ),
        {"__key__": "good2", "png": png_bytes(4), "txt": b"good-002 caption"},
        {"__key__": "good3", "wav": wav_bytes(5), "txt": b"good-003 transcript"},
    ]
    write_tar(str(root / "bad-000000.tar"), shard0)
    shard1 = [{"__key__": f"good{i}", "txt": f"good-{i:03d} text".encode()} for i in (4, 5, 6)]
    shard1.append(
        {"__key__": "good7", "png": png_bytes(7, size=64), "txt": b"good-007 dropped with the shard"}
    )
    path = write_tar(str(root / "bad-000001.tar"), shard1)
    with open(path, "r+b") as fh:  # cut inside good7.png: good7 and the end-of-archive blocks are lost
        fh.truncate(os.path.getsize(path) - 10240 - 3000)
    write_tar(
        str(root / "bad-000002.tar"),
        [
            {"__key__": "good8", "txt": b"good-008 text"},
            interleaved("badimg2", [seg("text", "lost"), seg("image", b"\x89PNG\r\n\x1a\n truncated")]),
            interleaved("good9", [seg("text", "good-009"), seg("speech", wav_bytes(9))]),
        ],
    )
    return [f"good-{i:03d}" for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)]


def test_bad_samples_are_skipped_and_counted(tmp_path):
    survivors = bad_corpus(tmp_path)
    pattern = str(tmp_path / "bad-{000000..000002}.tar")
    dm = make_datamodule(tmp_path, [SourceConfig("bad", pattern)], val_sets=[SourceConfig("bad", pattern)])
    docs = unpack_checked(read_val(dm), dm.vocab)
    tags = sorted(text_of(d, dm.vocab)[:8] for d in docs)
    assert tags == survivors
    assert dm.skip_counts("val") == {
        "bad_json": 2,
        "bad_encoding": 1,
        "unknown_modality": 1,
        "missing_member": 2,
        "bad_image": 2,
        "image_too_large": 0,
        "bad_audio": 1,
        "audio_too_long": 0,
        "member_too_large": 0,
        "too_many_members": 0,
        "doc_too_large": 0,
        "unknown_layout": 1,
        "empty_doc": 1,
        "too_long": 1,
        "bad_document": 0,
        "bad_pretokenized": 0,
        "unreadable_shard": 1,
        "duplicate_member": 0,
    }


def test_shard_errors_count_once_when_workers_share_a_shard(tmp_path):
    bad_corpus(tmp_path)
    one = [SourceConfig("one", str(tmp_path / "bad-000001.tar"))]  # 1 shard < 2 workers: split by sample
    dm = make_datamodule(tmp_path, one, val_sets=one, num_workers=2)
    docs = unpack_checked(read_val(dm), dm.vocab)
    assert sorted(text_of(d, dm.vocab)[:8] for d in docs) == ["good-004", "good-005", "good-006"]
    assert dm.skip_counts("val")["unreadable_shard"] == 1


@pytest.mark.parametrize("how", ["filter", "no_speech_tokenizer"])
def test_same_shards_text_image_or_text_image_speech(tmp_path, how):
    mixed_corpus(tmp_path, n=16, shards=2)
    val = [SourceConfig("all", str(tmp_path / "*.tar"))]
    full = make_datamodule(tmp_path, val, val_sets=val)
    kw = {"modalities": ["text", "image"]} if how == "filter" else {"speech_tokenizer": None}
    ti = make_datamodule(tmp_path, val, val_sets=val, **kw)
    assert (full.n_modalities, ti.n_modalities) == (3, 2)
    full_batches, ti_batches = read_val(full), read_val(ti)
    seen = lambda batches: set(torch.cat([b.modality.flatten() for b in batches]).tolist())
    assert seen(full_batches) == {0, 1, 2}
    assert seen(ti_batches) == {0, 1}
    assert not any((b.tokens == ti.vocab.bos_speech_id).any() for b in ti_batches)
    assert ti.stream_stats()["all"]["dropped_segments"] == 8  # 4 speech pairs + 4 interleaved with speech
    assert ti.stream_stats()["all"]["docs"] == 16  # speech pairs keep their transcript as a text document


def test_require_keeps_the_documents_holding_a_modality(tmp_path):
    mixed_corpus(tmp_path, n=16, shards=2)  # 4 each: text, image pairs, speech pairs, interleaved with both
    val = [SourceConfig("all", str(tmp_path / "*.tar"))]
    dm = make_datamodule(tmp_path, val, val_sets=val, modalities=["text", "image"], require=["image"])
    docs = unpack_checked(read_val(dm), dm.vocab)
    assert len(docs) == 8 and all((dm.vocab.modality_of(d) == Modality.IMAGE).any() for d in docs)
    assert dm.stream_stats()["all"]["filtered_docs"] == 8  # the text documents and the speech pairs' transcripts
    with pytest.raises(ValueError, match=r"data.require names \['speech'\], which data.modalities drops"):
        make_datamodule(tmp_path, val, modalities=["text", "image"], require=["speech"])


def test_setup_errors_are_clear(tmp_path):
    missing = make_datamodule(tmp_path, [SourceConfig("gone", str(tmp_path / "nope-{000..003}.tar"))])
    with pytest.raises(FileNotFoundError, match="source 'gone': 4 of 4 shards not found"):
        missing.setup("fit")
    write_tar(str(tmp_path / "empty.tar"), [])
    empty = make_datamodule(tmp_path, [SourceConfig("empty", str(tmp_path / "empty.tar"))])
    with pytest.raises(ValueError, match="source 'empty': all 1 shards are empty"):
        empty.setup("fit")
    with pytest.raises(FileNotFoundError, match="source .glob.: no file matches"):
        make_datamodule(tmp_path, [SourceConfig("glob", str(tmp_path / "none-*.tar"))]).setup("fit")
    with pytest.raises(ValueError, match="need a tokenizer for: speech"):
        make_datamodule(tmp_path, None, modalities=["text", "speech"], speech_tokenizer=None)


def test_training_epochs_have_fixed_length_and_reshuffle(tmp_path):
    mixed_corpus(tmp_path, n=24, shards=4)
    dm = make_datamodule(
        tmp_path,
        [SourceConfig("a", str(tmp_path / "*.tar"))],
        val_sets=[],
        train_batches_per_epoch=3,
        num_workers=1,
        shuffle_buffer=8,
        seq_len=64,
        batch_size=2,
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    epochs = [[b.tokens for b in loader] for _ in range(2)]
    assert len(loader) == 3 and [len(e) for e in epochs] == [3, 3]
    assert not all(torch.equal(a, b) for a, b in zip(*epochs)), "each epoch must reseed the stream"
    assert loader.state_dict() == {"epoch": 1, "yielded": 3}


def test_epoch_loader_resumes_mid_epoch_and_at_epoch_end(tmp_path):
    """A restored loader continues the batch sequence an unbroken loader produces."""
    mixed_corpus(tmp_path, n=24, shards=4)
    make = lambda: make_datamodule(  # noqa: E731
        tmp_path, [SourceConfig("a", str(tmp_path / "*.tar"))], val_sets=[], train_batches_per_epoch=3,
        num_workers=0, shuffle_buffer=8, seq_len=64, batch_size=2)
    dm = make()
    dm.setup("fit")
    unbroken = dm.train_dataloader()
    reference = [b.tokens for _ in range(3) for b in unbroken]  # 9 batches over 3 epochs
    for consumed in (2, 3, 4):  # mid-epoch, epoch end, mid second epoch
        first = make()
        first.setup("fit")
        loader = first.train_dataloader()
        it, got = iter(loader), []
        while len(got) < consumed:
            try:
                got.append(next(it).tokens)
            except StopIteration:
                it = iter(loader)
        state = loader.state_dict()
        resumed_dm = make()
        resumed_dm.setup("fit")
        resumed = resumed_dm.train_dataloader()
        resumed.load_state_dict(state)
        rest = [b.tokens for b in resumed]
        while len(got) + len(rest) < 9:
            rest += [b.tokens for b in resumed]
        assert all(torch.equal(a, b) for a, b in zip(got + rest, reference)), consumed


def test_image_text_pairs_reads_the_first_validation_set(tmp_path):
    """Raw validation images and their documents' text, in shard order, without tokenizers or setup."""
    mixed_corpus(tmp_path, n=16, shards=4)  # shard 1 holds the image-caption pairs, shard 3 the interleaved
    val = [SourceConfig("first", str(tmp_path / "mixed-{000000..000003}.tar")), SourceConfig("other", "x.tar")]
    dm = make_datamodule(tmp_path, val[:1], val_sets=val)
    images, texts = dm.image_text_pairs(6)
    assert images.shape == (6, 3, 32, 32) and images.dtype == torch.float32
    assert texts[:4] == [f"good-{i:03d} caption" for i in (1, 5, 9, 13)]
    assert texts[4:] == ["good-003 and", "good-007 and"]  # interleaved: text segments joined
    expected = np.asarray(Image.open(io.BytesIO(png_bytes(5))).convert("RGB"), dtype=np.float32) / 255
    assert torch.allclose(images[1], torch.from_numpy(expected).permute(2, 0, 1), atol=1e-6)
    assert dm.image_text_pairs(100)[0].shape[0] == 8  # all there are
    none = make_datamodule(tmp_path, val[:1], val_sets=[])
    assert none.image_text_pairs(3)[0].shape == (0, 3, 32, 32) and none.image_text_pairs(3)[1] == []
