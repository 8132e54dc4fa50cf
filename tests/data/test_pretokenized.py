"""Pre-tokenized shards: the same batches as the raw shards they came from (validation and training with
caption dropout), raw + pre-tokenized sources mixed, batched image encoding agrees with one-by-one,
tokenizer fingerprints that differ are refused naming the tokenizer, nothing is unpickled, and
`mot data tokenize --config` end to end."""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import fields

import numpy as np
import pytest
import torch
import yaml

from mot_lightning.data.counters import NullCounters
from mot_lightning.data.documents import NO_LIMITS, Document, Segment
from mot_lightning.data.packing import LatentDoc
from mot_lightning.data.pretokenized import MEMBER, FingerprintMismatch, fingerprints
from mot_lightning.data.sources import SourceConfig
from mot_lightning.data.tokenize_shards import BatchEncoder, tokenize_source
from mot_lightning.data.tokenize_shards import main as tokenize_main
from mot_lightning.modality import Modality
from mot_lightning.shards.reader import shard_samples
from mot_lightning.tokenizers import KLVAEConfig, LatentImageTokenizer
from mot_lightning.tokenizers.fitting import TrainConfig
from mot_lightning.tokenizers.image_kmeans import KMeansImageConfig, KMeansImageTokenizer
from mot_lightning.tokenizers.text import ByteTokenizer

from .helpers import (
    PatchCodebookTokenizer,
    make_datamodule,
    mixed_corpus,
    png_bytes,
    unpack_checked,
    write_tar,
)

RAW = "mixed-{000000..000003}.tar"


def pretokenize(dm, root, out, shard_size: int = 6, workers: int = 1, batch_size: int = 4, chunk: int = 3) -> str:
    """Tokenize the raw corpus under ``root`` with ``dm``'s tokenizers; returns the output pattern. By
    default its shards hold what the raw ones hold (6 documents, in 2 chunks of 3)."""
    stamp = fingerprints(dm.encoder, dm.image_size)
    got = tokenize_source(SourceConfig("all", str(root / RAW)), dm.encoder, dm.kept, str(out), dm.image_size,
                          NO_LIMITS, stamp, batch_size=batch_size, workers=workers, shard_size=shard_size,
                          chunk=chunk)
    assert got.docs == 24 and not got.skipped
    return str(out / f"all-{{000000..{len(got.shards) - 1:06d}}}.tar")


def same_batches(a, b) -> bool:
    return len(a) == len(b) and all(
        all(torch.equal(getattr(x, f.name), getattr(y, f.name)) for f in fields(x) if getattr(x, f.name) is not None)
        for x, y in zip(a, b))


def test_pretokenized_shards_give_the_raw_shards_batches(tmp_path):
    mixed_corpus(tmp_path, n=24, shards=4)
    raw = [SourceConfig("all", str(tmp_path / RAW))]
    dm = make_datamodule(tmp_path, raw, val_sets=raw, num_workers=0, caption_dropout=0.3, shuffle_buffer=8)
    pre = [SourceConfig("all", pretokenize(dm, tmp_path, tmp_path / "pre"))]
    pre_dm = make_datamodule(tmp_path, pre, val_sets=pre, num_workers=0, caption_dropout=0.3, shuffle_buffer=8)
    for d in (dm, pre_dm):
        d.setup("fit")
    assert same_batches(list(dm.val_dataloader()[0]), list(pre_dm.val_dataloader()[0]))
    raw_train, pre_train = (list(d.train_dataloader()) for d in (dm, pre_dm))  # shuffled, captions dropped
    assert same_batches(raw_train, pre_train)
    assert pre_dm.stream_stats()["all"]["docs"] == 24 and sum(pre_dm.skip_counts("val").values()) == 0


def test_raw_and_pretokenized_sources_mix_and_filters_apply(tmp_path):
    mixed_corpus(tmp_path, n=24, shards=4)
    dm = make_datamodule(tmp_path, [SourceConfig("all", str(tmp_path / RAW))], val_sets=[], num_workers=0)
    pattern = pretokenize(dm, tmp_path, tmp_path / "pre")
    write_tar(str(tmp_path / "other.tar"), [{"__key__": f"o{i}", "txt": f"other-{i} words".encode()}
                                            for i in range(10)])
    sources = [SourceConfig("pre", pattern, weight=1.0), SourceConfig("raw", str(tmp_path / "other.tar"))]
    mixed = make_datamodule(tmp_path, sources, val_sets=[], num_workers=2, train_batches_per_epoch=8)
    mixed.setup("fit")
    text = " ".join(bytes(t for t in row.tolist() if t < 256).decode(errors="replace")
                    for b in mixed.train_dataloader() for row in b.tokens)
    assert "other-" in text and "good-" in text
    # a source's modality filter drops the pieces of other modalities, as on raw shards
    ti = [SourceConfig("pre", pattern, modalities=["text", "image"])]
    raw_ti = [SourceConfig("all", str(tmp_path / RAW), modalities=["text", "image"])]
    a, b = (make_datamodule(tmp_path, s, val_sets=s, num_workers=0) for s in (ti, raw_ti))
    docs = [Counter(tuple(d.tolist()) for d in unpack_checked(list((x.setup("validate"), x.val_dataloader()[0])[1]),
                                                             x.vocab)) for x in (a, b)]
    assert docs[0] == docs[1]
    assert a.stream_stats()["pre"]["dropped_segments"] == b.stream_stats()["all"]["dropped_segments"] == 12


def test_other_tokenizers_are_refused_naming_them(tmp_path):
    mixed_corpus(tmp_path, n=24, shards=4)
    dm = make_datamodule(tmp_path, [SourceConfig("all", str(tmp_path / RAW))], val_sets=[], num_workers=0)
    pattern = pretokenize(dm, tmp_path, tmp_path / "pre")
    pre = [SourceConfig("pre", pattern)]
    other_image = make_datamodule(tmp_path, pre, val_sets=pre, image_tokenizer=PatchCodebookTokenizer(seed=1))
    with pytest.raises(FingerprintMismatch, match="the image tokenizer differs") as err:
        other_image.setup("fit")
    assert "PatchCodebookTokenizer:" in str(err.value) and "mot data tokenize" in str(err.value)
    no_speech = make_datamodule(tmp_path, pre, val_sets=pre, speech_tokenizer=None)
    with pytest.raises(FingerprintMismatch, match="the joint vocabulary layout"):
        no_speech.setup("validate")
    # a later shard made with other tokenizers is refused by the stream itself
    other = make_datamodule(tmp_path, [SourceConfig("all", str(tmp_path / RAW))], val_sets=[],
                            image_tokenizer=PatchCodebookTokenizer(seed=1))
    late = pretokenize(other, tmp_path, tmp_path / "other", shard_size=24)
    both = [SourceConfig("pre", [pattern, late])]
    dm = make_datamodule(tmp_path, both, val_sets=both, num_workers=1)
    dm.setup("validate")
    with pytest.raises(FingerprintMismatch, match="was made with other tokenizers: the image tokenizer"):
        list(dm.val_dataloader()[0])


def test_damaged_and_pickled_arrays_are_skipped_never_unpickled(tmp_path):
    mixed_corpus(tmp_path, n=24, shards=4)
    dm = make_datamodule(tmp_path, [SourceConfig("all", str(tmp_path / RAW))], val_sets=[], num_workers=0)
    pattern = pretokenize(dm, tmp_path, tmp_path / "pre", shard_size=24, chunk=4)
    pickled = io.BytesIO()
    np.save(pickled, np.array([object()], dtype=object), allow_pickle=True)  # loading it would need pickle
    good = next(iter(shard_samples([pattern.replace("{000000..000000}", "000000")], NullCounters())))
    flat = np.load(io.BytesIO(good[MEMBER]), allow_pickle=False).copy()
    flat[-2] = 99  # the last piece names no modality
    wrong_length = np.concatenate([flat[:-2], flat[-1:]])  # the table no longer matches
    write_tar(str(tmp_path / "bad.tar"), [{"__key__": "p", MEMBER: pickled.getvalue()},
                                          {"__key__": "z", MEMBER: b"not an array"},
                                          {"__key__": "f", MEMBER: pickled.getvalue()[:60]},
                                          {"__key__": "m", MEMBER: _npy_bytes(flat)},
                                          {"__key__": "w", MEMBER: _npy_bytes(wrong_length)}])
    val = [SourceConfig("v", [pattern, str(tmp_path / "bad.tar")])]
    dm = make_datamodule(tmp_path, val, val_sets=val, num_workers=0)
    dm.setup("validate")
    assert len(unpack_checked(list(dm.val_dataloader()[0]), dm.vocab)) == 24
    assert dm.skip_counts("val")["bad_pretokenized"] == 5


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


@pytest.fixture(scope="module")
def image_tokenizers(tmp_path_factory):
    images = [torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(16)]
    kmeans = KMeansImageTokenizer(KMeansImageConfig(resolution=16, patch_size=4, codebook_size=8, iters=2))
    kmeans.fit(images)
    latent = LatentImageTokenizer(KLVAEConfig(resolution=16, downsample=4, channels=8, res_blocks=0,
                                              latent_channels=2, patch_size=2))
    latent.fit(images, TrainConfig(max_steps=3, batch_size=8, accelerator="cpu", progress_bar=False,
                                   log_dir=str(tmp_path_factory.mktemp("klvae")), val_every_n_steps=1000))
    return {"kmeans": kmeans, "latent": latent}


@pytest.mark.parametrize("kind", ["kmeans", "latent"])
def test_batched_image_encoding_agrees_with_one_by_one(image_tokenizers, kind):
    from mot_lightning.data.encode import DocumentEncoder

    encoder = DocumentEncoder(ByteTokenizer(), image_tokenizers[kind])
    images = [torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(50 + i)) for i in range(5)]
    docs = [Document(f"d{i}", [Segment(Modality.TEXT, f"doc {i}"), Segment(Modality.IMAGE, images[i])]
                     + ([Segment(Modality.IMAGE, images[i - 1]), Segment(Modality.TEXT, "")] if i else []))
            for i in range(5)]
    batched = BatchEncoder(encoder, batch_size=8).encode(docs)
    for doc, (got, pieces) in zip(docs, batched):
        want = encoder.encode(doc)
        assert [p[0] for p in pieces] == [s.modality for s in doc.segments if s.value != ""]
        if isinstance(want, LatentDoc):
            assert torch.equal(got.ids, want.ids)
            torch.testing.assert_close(got.latents, want.latents, rtol=1e-5, atol=1e-5)  # conv: batch of 1 vs 9
        else:
            assert torch.equal(got, want)


def test_latent_images_round_trip_through_pretokenized_shards(image_tokenizers, tmp_path):
    """Transfusion documents: ids and latent patches come back exactly (encoded one by one here)."""
    mixed_corpus(tmp_path, n=24, shards=4)
    raw = [SourceConfig("all", str(tmp_path / RAW), modalities=["text", "image"])]
    kw = {"image_tokenizer": image_tokenizers["latent"], "speech_tokenizer": None, "num_workers": 0}
    dm = make_datamodule(tmp_path, raw, val_sets=raw, **kw)
    pre = [SourceConfig("all", pretokenize(dm, tmp_path, tmp_path / "pre", batch_size=1))]
    pre_dm = make_datamodule(tmp_path, pre, val_sets=pre, **kw)
    for d in (dm, pre_dm):
        d.setup("validate")
    raw_batches, pre_batches = (list(d.val_dataloader()[0]) for d in (dm, pre_dm))
    assert raw_batches[0].latents is not None and same_batches(raw_batches, pre_batches)


def test_mot_data_tokenize_from_a_training_yaml(tmp_path, capsys):
    mixed_corpus(tmp_path, n=24, shards=4)
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"anything": "else is ignored"},
        "data": {"text_tokenizer": {"class_path": "mot_lightning.tokenizers.text.ByteTokenizer"},
                 "image_tokenizer": {"class_path": "tests.data.helpers.PatchCodebookTokenizer"},
                 "sources": [{"name": "mix", "urls": str(tmp_path / RAW), "weight": 2.0}],
                 "val_sets": [{"name": "held", "urls": str(tmp_path / "mixed-000000.tar")}],
                 "seq_len": 128, "loader": {"num_workers": 0}}}))
    for split in ("train", "held"):
        tokenize_main(["--config", str(config), "--out", str(tmp_path / "out"), "--split", split,
                       "--data.tokenizer_files.dir", str(tmp_path / "tok"), "--workers", "2"])
    printed = capsys.readouterr().out
    assert "mix: 24 documents" in printed  # no speech tokenizer: speech pairs keep their transcript
    snippet = yaml.safe_load(printed[printed.index("data:"):printed.index("held:")])
    source = snippet["data"]["sources"][0]
    assert source["name"] == "mix" and source["weight"] == 2.0
    pre = [SourceConfig(**source)]
    dm = make_datamodule(tmp_path, pre, val_sets=pre, speech_tokenizer=None, num_workers=0)
    dm.setup("fit")
    assert len(list(dm.train_dataloader())) == 5
    assert (tmp_path / "out" / "held" / "manifest.json").is_file()
    assert png_bytes  # the raw corpus holds PNGs; the output holds none
    assert not [p for p in (tmp_path / "out").rglob("*.png")]


def test_a_run_on_the_printed_yaml_reads_the_fitted_tokenizers_that_made_the_shards(tmp_path, capsys):
    """Fitted tokenizer files are named by the data they were fitted on, and the pre-tokenized sources are
    other data: the printed YAML names the files that made the shards, and a run on it loads them (without
    them the run asks which file is meant)."""
    from mot_lightning.data.options import TokenizerFiles

    mixed_corpus(tmp_path, n=24, shards=4)
    kmeans = {"resolution": 16, "patch_size": 4, "codebook_size": 8, "iters": 2}
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"data": {
        "text_tokenizer": {"class_path": "mot_lightning.tokenizers.text.ByteTokenizer"},
        "image_tokenizer": {"class_path": "mot_lightning.tokenizers.image_kmeans.KMeansImageTokenizer",
                            "init_args": {"config": kmeans}},
        "sources": [{"name": "mix", "urls": str(tmp_path / RAW)}], "seq_len": 128, "loader": {"num_workers": 0},
        "tokenizer_files": {"dir": str(tmp_path / "tok")}}}))
    tokenize_main(["--config", str(config), "--out", str(tmp_path / "out"), "--workers", "1"])
    printed = capsys.readouterr().out
    data = yaml.safe_load(printed[printed.index("\ndata:"):])["data"]
    [fit] = (tmp_path / "tok").glob("image-KMeansImageTokenizer-*.pt")  # fitted by the command, once
    assert data["tokenizer_files"] == {"files": {"image": str(fit)}}
    manifest = json.loads((tmp_path / "out" / "train" / "manifest.json").read_text())
    assert manifest["tokenizer_files"] == {"image": str(fit)}

    pre = [SourceConfig(**source) for source in data["sources"]]
    kw = {"image_tokenizer": KMeansImageTokenizer(KMeansImageConfig(**kmeans)), "speech_tokenizer": None,
          "num_workers": 0}
    with pytest.raises(FileNotFoundError, match="name the one you mean"):
        make_datamodule(tmp_path, pre, tokenizer_files=TokenizerFiles(dir=str(tmp_path / "tok")), **kw).setup("fit")
    dm = make_datamodule(tmp_path, pre, tokenizer_files=TokenizerFiles(**data["tokenizer_files"]), **kw)
    dm.setup("fit")
    assert dm.tokenizer_stamp()["image"]["file"] == str(fit)  # what a checkpoint of the run records
    assert len(list(dm.train_dataloader())) == 5
