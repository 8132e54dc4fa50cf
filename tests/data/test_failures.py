"""Failing loudly and fairly on hostile data: streams that can make no batch, stalls, empty and uneven
shards, skip counters per stage across a resume, bounded and narrowly caught decoding, bad weights."""

from __future__ import annotations

import io
import os
import signal
import struct
import time
import warnings
import zlib
from collections import Counter

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mot_lightning.data import loaders
from mot_lightning.data.documents import BadSample, load_audio, load_image
from mot_lightning.data.loaders import DataSkipWarning
from mot_lightning.data.sources import SourceConfig

from .helpers import make_datamodule, png_bytes, text_of, wav_bytes, write_tar


def text_docs(prefix: str, n: int, words: int = 8) -> list[dict]:
    return [{"__key__": f"{prefix}{i:04d}", "txt": f"{prefix}-{i:04d} {'word ' * words}".encode()}
            for i in range(n)]


def tags(batch, vocab, prefix) -> list[str]:
    return [t for row in batch.tokens for t in text_of(row, vocab).split() if t.startswith(prefix + "-")]


# --- 1. a stream that can make no batch says so; stalls time out; high skip rates warn --------
@pytest.mark.timeout(120)
def test_no_document_fits_seq_len_fails_within_seconds(tmp_path):
    write_tar(str(tmp_path / "long-000000.tar"), text_docs("long", 40, words=40))  # >= 210 tokens each
    dm = make_datamodule(tmp_path, [SourceConfig("long", str(tmp_path / "long-000000.tar"))], val_sets=[],
                         seq_len=48, num_workers=1)
    dm.setup("fit")
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"no document fits seq_len 48: the shortest has 21\d tokens"):
        next(iter(dm.train_dataloader()))
    assert time.perf_counter() - start < 30


@pytest.mark.timeout(120)
def test_a_stalled_worker_becomes_an_error_naming_the_timeout_key(tmp_path):
    shard = write_tar(str(tmp_path / "ok.tar"), text_docs("ok", 20))
    slow = f"pipe:sleep 6; cat {shard}"  # a remote source that never answers in time
    dm = make_datamodule(tmp_path, [SourceConfig("slow", slow)], val_sets=[], num_workers=1, timeout=2.0)
    dm.setup("fit")
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"no batch from the data workers in 2 s \(data.loader.timeout\)"):
        next(iter(dm.train_dataloader()))
    assert time.perf_counter() - start < 15


def test_high_skip_rate_warns_once_with_reasons_and_counts(tmp_path):
    docs = text_docs("long", 90, words=30) + text_docs("short", 10, words=1)
    write_tar(str(tmp_path / "mix.tar"), docs)
    dm = make_datamodule(tmp_path, [SourceConfig("mix", str(tmp_path / "mix.tar"))], val_sets=[],
                         seq_len=100, num_workers=0, train_batches_per_epoch=4, batch_size=2)
    dm.setup("fit")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            list(dm.train_dataloader())
    messages = [str(w.message) for w in caught if issubclass(w.category, DataSkipWarning)]
    assert len(messages) == 1, messages
    assert "data stream 'train'" in messages[0] and "too_long=" in messages[0]
    assert "data.loader.skip_warning 10%" in messages[0] and "data.seq_len" in messages[0]


# --- 2. empty and uneven shards across workers ---------------------------------------------
def test_an_empty_shard_does_not_crash_two_workers(tmp_path):
    write_tar(str(tmp_path / "empty.tar"), [])
    write_tar(str(tmp_path / "good.tar"), text_docs("good", 30))
    sources = [SourceConfig("s", [str(tmp_path / "empty.tar"), str(tmp_path / "good.tar")])]
    for workers in (1, 2):
        dm = make_datamodule(tmp_path, sources, val_sets=[], num_workers=workers, seq_len=64, batch_size=2)
        dm.setup("fit")
        batches = list(dm.train_dataloader())
        assert len(batches) == 5
        assert all(tags(b, dm.vocab, "good") for b in batches)


def test_an_epoch_ends_with_its_workers_and_their_feeder_threads_gone(tmp_path, monkeypatch):
    """The next epoch forks new workers at once; no thread of the last one may still be ending then (on
    Python before 3.11.10 a thread ending during a fork can deadlock the child: ``join_feeder_threads``)."""
    write_tar(str(tmp_path / "good.tar"), text_docs("good", 30))
    dm = make_datamodule(tmp_path, [SourceConfig("s", str(tmp_path / "good.tar"))], val_sets=[], num_workers=2,
                         seq_len=64, batch_size=2, train_batches_per_epoch=3)
    dm.setup("fit")
    ended = []  # each epoch's DataLoader iterator, as the epoch shut it down

    def shut_down(iterator):
        loaders.shut_down.__wrapped__(iterator)
        ended.append(iterator)

    shut_down.__wrapped__ = loaders.shut_down
    monkeypatch.setattr(loaders, "shut_down", shut_down)
    loader = dm.train_dataloader()
    assert [len(list(loader)) for _ in range(2)] == [3, 3]
    assert len(ended) == 2
    for iterator in ended:
        assert not any(w.is_alive() for w in iterator._workers)
        feeders = [q._thread for q in iterator._index_queues if q._thread is not None]
        assert feeders and not any(t.is_alive() for t in feeders)


def repeat_ratio(tmp_path, workers: int = 2, batches: int = 60) -> float:
    """Mean repeats of the small shard's documents / mean repeats of the large shard's documents."""
    write_tar(str(tmp_path / "small.tar"), text_docs("small", 10))
    write_tar(str(tmp_path / "large.tar"), text_docs("large", 45))
    sources = [SourceConfig("s", [str(tmp_path / "small.tar"), str(tmp_path / "large.tar")])]
    dm = make_datamodule(tmp_path, sources, val_sets=[], num_workers=workers, seq_len=64, batch_size=2,
                         train_batches_per_epoch=batches, shuffle_buffer=0)
    dm.setup("fit")
    seen = Counter(t for b in dm.train_dataloader() for p in ("small", "large") for t in tags(b, dm.vocab, p))
    small = sum(n for t, n in seen.items() if t.startswith("small")) / 10
    large = sum(n for t, n in seen.items() if t.startswith("large")) / 45
    return small / large


def test_uneven_shards_are_sampled_in_proportion_to_their_documents(tmp_path):
    ratio = repeat_ratio(tmp_path)
    print(f"repeat ratio small/large shard documents, 2 workers: {ratio:.2f}")
    assert 0.8 < ratio < 1.25  # by shard it was 4.5: each worker yields at the same rate


# --- 3. skip counters per stage, carried across a resume -----------------------------------
def bad_and_good(tmp_path) -> tuple[list[SourceConfig], list[SourceConfig]]:
    docs = text_docs("good", 20)
    docs[3::4] = [{"__key__": f"bad{i}", "txt": b"\xff\xfe not utf-8"} for i in range(len(docs[3::4]))]
    write_tar(str(tmp_path / "train.tar"), docs)
    bad_png = [{"__key__": f"v{i}", "png": b"not a png", "txt": b"x"} for i in range(3)]
    write_tar(str(tmp_path / "val.tar"), [bad_png[0], *text_docs("val", 4)])
    # a set with no usable document: no batch, only what its readers read (counted at its end)
    write_tar(str(tmp_path / "bad.tar"), bad_png[1:])
    return [SourceConfig("t", str(tmp_path / "train.tar"))], [SourceConfig("v", str(tmp_path / "val.tar")),
                                                              SourceConfig("bad", str(tmp_path / "bad.tar"))]


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_counters_per_stage_and_across_a_resume(tmp_path, workers):
    """With workers reading ahead, the training counts are still those of the batches taken (counted by batch):
    they stay put while the workers fill their prefetch queues, and a resumed run lands on the same counts."""
    train, val = bad_and_good(tmp_path)

    def make():
        dm = make_datamodule(tmp_path, train, val_sets=val, num_workers=workers, seq_len=64, batch_size=2,
                             train_batches_per_epoch=3, skip_warning=None)
        dm.setup("fit")
        return dm

    unbroken = make()
    loader = unbroken.train_dataloader()
    it = iter(loader)
    next(it)
    after_one = unbroken.stream_stats()["train"]
    time.sleep(0.5)  # workers, if any, read 4 batches ahead each meanwhile (prefetch_factor)
    assert unbroken.stream_stats()["train"] == after_one and after_one["docs"] > 0
    list(it)
    for _ in range(2):
        list(loader)
    for _ in range(2):  # validation counts are per pass
        for val_loader in unbroken.val_dataloader():
            list(val_loader)
    assert unbroken.skip_counts("val") == {**dict.fromkeys(unbroken.skip_counts("val"), 0), "bad_image": 3}
    expected = unbroken.skip_counts("train")
    assert expected["bad_encoding"] > 0 and expected["bad_image"] == 0
    assert unbroken.skip_metrics("train")["data/train/skipped_bad_encoding"] == expected["bad_encoding"]

    first = make()
    loader = first.train_dataloader()
    list(loader)
    it = iter(loader)
    next(it)  # stopped one batch into the second epoch
    state, loader_state = first.state_dict(), loader.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    loader = resumed.train_dataloader()
    loader.load_state_dict(loader_state)
    list(loader)
    list(loader)
    assert resumed.skip_counts("train") == expected


# --- 4. bounded decoding ------------------------------------------------------------------
def huge_png(side: int) -> bytes:
    """A valid black greyscale PNG of side x side pixels, a few KB on disk (rows compressed as a stream)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, row, parts = zlib.compressobj(9), b"\0" * (side + 1), []
    for _ in range(side):
        parts.append(z.compress(row))
    parts.append(z.flush())
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def test_oversized_media_are_skipped_from_their_header(tmp_path):
    raw = huge_png(6000)
    assert len(raw) < 100_000
    start = time.perf_counter()
    with pytest.raises(BadSample) as bad:
        load_image(raw, 32, "big.png", max_pixels=10_000_000)
    assert bad.value.reason == "image_too_large" and "6000x6000" in bad.value.detail
    assert time.perf_counter() - start < 0.1  # header only: decoding it takes far longer
    assert load_image(raw, 32, "big.png", max_pixels=40_000_000).shape == (3, 32, 32)
    with pytest.raises(BadSample) as bad:
        load_audio(wav_bytes(0, seconds=3.0), max_seconds=2.0)
    assert bad.value.reason == "audio_too_long"
    assert load_audio(wav_bytes(0, seconds=3.0), max_seconds=4.0).shape == (48_000,)

    write_tar(str(tmp_path / "m.tar"), [{"__key__": "big", "png": raw, "txt": b"big"},
                                        {"__key__": "long", "wav": wav_bytes(1, seconds=3.0), "txt": b"t"},
                                        {"__key__": "ok", "png": png_bytes(0), "txt": b"fine"}])
    val = [SourceConfig("m", str(tmp_path / "m.tar"))]
    dm = make_datamodule(tmp_path, val, val_sets=val, seq_len=256, max_image_pixels=1_000_000,
                         max_audio_seconds=2.0)
    dm.setup("validate")
    list(dm.val_dataloader()[0])
    counts = dm.skip_counts("val")
    assert counts["image_too_large"] == 1 and counts["audio_too_long"] == 1 and dm.stream_stats()["m"]["docs"] == 1


def test_large_jpegs_decode_in_draft_mode_close_to_a_full_decode():
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    buf = io.BytesIO()
    small.resize((4000, 3000), Image.Resampling.BICUBIC).save(buf, format="JPEG", quality=90)
    fast = load_image(buf.getvalue(), 32)
    img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    from PIL import ImageOps

    full = ImageOps.fit(img, (32, 32), Image.Resampling.BICUBIC)
    full = torch.from_numpy(np.asarray(full, dtype=np.float32) / 255).permute(2, 0, 1)
    assert (fast - full).abs().mean() < 0.02  # smooth content: draft scaling changes little


# --- 5. only decode errors are caught: interrupts and timeouts pass through --------------------
@pytest.mark.parametrize("error", [KeyboardInterrupt, TimeoutError])
def test_interrupts_and_timeouts_raised_while_decoding_propagate(error):
    """A signal handler raising while PIL decodes (~0.5 s of work): the error leaves ``load_image``
    unchanged instead of becoming a skipped ``bad_image`` (``TimeoutError`` is an ``OSError``)."""
    raw = huge_png(7000)

    def fire(signum, frame):
        raise error("raised inside the decoder")

    previous = signal.signal(signal.SIGALRM, fire)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.02)
        with pytest.raises(error):
            load_image(raw, 32, max_pixels=10**8)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_audio_decode_errors_are_caught_and_nothing_else():
    """soundfile reads bytes through cffi callbacks, which swallow whatever a signal handler raises in
    them, so no real interrupt reaches ``load_audio``'s handler; its catch list must still not hold one."""
    from mot_lightning.data.documents import AUDIO_ERRORS, IMAGE_ERRORS, PASS_THROUGH

    for caught in (AUDIO_ERRORS, IMAGE_ERRORS):
        assert not issubclass(KeyboardInterrupt, caught)
    assert issubclass(TimeoutError, PASS_THROUGH) and not issubclass(TimeoutError, AUDIO_ERRORS)
    with pytest.raises(BadSample) as bad:
        load_audio(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    assert bad.value.reason == "bad_audio"


# --- 6. inputs checked before anything heavy ----------------------------------------------
@pytest.mark.parametrize("weight", [".nan", "-1.0", ".inf", "0"])
def test_a_bad_source_weight_is_refused_when_the_config_is_read(tmp_path, weight):
    from jsonargparse import ArgumentParser

    from mot_lightning.data.datamodule import MultiModalDataModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(MultiModalDataModule, "data")
    config = yaml.safe_load(f"""
data:
  text_tokenizer: {{class_path: mot_lightning.tokenizers.text.ByteTokenizer}}
  sources: [{{name: captions, urls: {tmp_path}/a.tar, weight: {weight}}}]
""")
    with pytest.raises((ValueError, TypeError), match="source 'captions': weight must be a finite number > 0"):
        parser.instantiate_classes(parser.parse_object(config))


def test_prepare_data_checks_sources_before_making_anything(tmp_path):
    dm = make_datamodule(tmp_path, [SourceConfig("gone", str(tmp_path / "nope-{000..003}.tar"))],
                         val_sets=[])
    with pytest.raises(FileNotFoundError, match="source 'gone': 4 of 4 shards not found"):
        dm.prepare_data()
    assert not os.listdir(tmp_path)  # no demo corpus, no tokenizer directory
