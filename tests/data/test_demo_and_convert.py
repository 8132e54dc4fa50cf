"""Demo corpus (deterministic, complete, held-out split, the start of the demo world's stream, rewritten when its
generator or config changes) and the `mot data` converters."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from mot_lightning.commands import data as cli
from mot_lightning.data.demo import GENERATOR, DemoConfig, generate
from mot_lightning.data.options import DemoCorpus
from mot_lightning.data.sources import SourceConfig
from mot_lightning.world import virtual
from mot_lightning.world.procedural import HELD_OUT

from .helpers import make_datamodule, png_bytes, text_of, unpack_checked, wav_bytes


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_is_deterministic(tmp_path):
    cfg = {"train_docs": 40, "val_docs": 8, "shard_size": 5}
    generate(DemoConfig(out=str(tmp_path / "a"), **cfg))
    generate(DemoConfig(out=str(tmp_path / "b"), **cfg))
    a, b = all_files(tmp_path / "a"), all_files(tmp_path / "b")
    assert len(a) > 10 and a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a if k != "manifest.json")
    (tmp_path / "a" / "tokenizers").mkdir()
    (tmp_path / "a" / "tokenizers" / "keep.txt").write_text("another tool's files")
    generate(DemoConfig(out=str(tmp_path / "a"), seed=1, **cfg))
    regenerated = all_files(tmp_path / "a")
    assert regenerated["train/text-000000.tar"] != a["train/text-000000.tar"]
    assert regenerated["tokenizers/keep.txt"] == b"another tool's files"
    assert not (tmp_path / "a.partial").exists()


def _tar_samples(path: Path) -> list[dict]:
    return [{k: v for k, v in sample.items() if k not in ("__url__", "__local_path__")}
            for sample in wds.WebDataset(str(path), shardshuffle=False)]


def test_the_fixed_corpus_is_the_start_of_the_demo_worlds_stream(tmp_path):
    """Each training shard holds one virtual shard of the procedural world's training stream (the last one cut
    at ``train_docs``), each validation shard one of its validation splits: one world, one generator."""
    manifest = generate(DemoConfig(out=str(tmp_path / "d"), train_docs=60, val_docs=7, shard_size=4))
    assert manifest["generator"] == GENERATOR and manifest["train"]["text"] == {
        "docs": 9, "shards": 3, "pattern": "train/text-{000000..000002}.tar"}
    for split, kind, index, docs in (("train", "image_caption", 0, 4), ("train", "text", 2, 1),
                                     ("train", "interleaved", 5, 1), ("val_heldout", "mixed", 1, 3)):
        written = _tar_samples(tmp_path / "d" / split / f"{kind}-{index:06d}.tar")
        streamed = list(virtual.samples(virtual.VirtualShard(split, kind, index, 0, 4, 32)))[:docs]
        assert written == streamed, (split, kind, index)


def test_prepare_keeps_a_matching_corpus_and_rewrites_another_generators_or_configs(tmp_path):
    cfg = DemoConfig(out=str(tmp_path / "d"), train_docs=20, val_docs=4, shard_size=5)
    cfg.prepare()
    manifest = tmp_path / "d" / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    cfg.prepare()
    assert manifest.stat().st_mtime_ns == stamp  # kept
    old = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**old, "generator": "mot_lightning demo v1"}))  # the retired world's corpus
    cfg.prepare()
    assert json.loads(manifest.read_text()) == old  # rewritten by this generator
    DemoConfig(out=str(tmp_path / "d"), train_docs=24, val_docs=4, shard_size=5).prepare()
    assert json.loads(manifest.read_text())["config"]["train_docs"] == 24


def test_prepare_data_generates_demo_and_it_reads_cleanly(tmp_path):
    dm = make_datamodule(tmp_path, None, seq_len=512, demo=DemoCorpus(str(tmp_path / "demo"), 400, 48))
    assert not (tmp_path / "demo").exists()
    dm.prepare_data()
    assert (tmp_path / "demo" / "manifest.json").is_file()
    dm.setup("fit")
    assert dm.val_set_names == ["val_seen", "val_heldout"]
    texts = {}
    for name, loader in zip(dm.val_set_names, dm.val_dataloader()):
        texts[name] = [text_of(d, dm.vocab) for d in unpack_checked(list(loader), dm.vocab)]
        assert len(texts[name]) == 48
    assert sum(dm.skip_counts("val").values()) == 0
    held = [f"{colour} {shape}" for colour, shape in HELD_OUT]
    # a held-out scene's caption names the held-out group ("two small pink crosses ..."); an image followed by a
    # question asks about one group only
    assert all(any(h in t for h in held) for t in texts["val_heldout"] if "question" not in t)
    assert not any(h in t for h in held for t in texts["val_seen"])
    train = make_datamodule(
        tmp_path,
        [SourceConfig("t", str(tmp_path / "demo/train/*.tar"))],
        val_sets=[SourceConfig("t", str(tmp_path / "demo/train/*.tar"))],
        seq_len=512,
    )
    train.setup("validate")
    train_texts = [
        text_of(d, train.vocab) for d in unpack_checked(list(train.val_dataloader()[0]), train.vocab)
    ]
    assert len(train_texts) == 400
    assert not any(h in t for h in held for t in train_texts), "held-out combinations leaked into training"
    kinds = {re.sub(r"\d", "", t.split(" ")[0]) for t in train_texts}
    assert len(kinds) > 3  # captions, "first, ...", "caption: ...", questions


def test_demo_command(tmp_path, capsys):
    cli.main(
        ["demo", "--out", str(tmp_path / "d"), "--train-docs", "20", "--val-docs", "4", "--image-size", "64"]
    )
    out = capsys.readouterr().out
    assert "demo corpus written" in out and "val_heldout" in out
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["config"]["image_size"] == 64


def test_convert_pairs_text_and_interleaved(tmp_path, capsys):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.png").write_bytes(png_bytes(0))
    (src / "a.txt").write_text("caption a")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src / "sub" / "b.bmp")
    (src / "sub" / "b.txt").write_text("b")
    (src / "c.jpg").write_bytes(b"not a jpeg")
    (src / "c.txt").write_text("c")
    (src / "d.png").write_bytes(png_bytes(1))  # no caption
    (src / "e.wav").write_bytes(wav_bytes(0))
    (src / "e.txt").write_text("spoken e")
    (src / "f.wav").write_bytes(b"RIFF broken")
    (src / "f.txt").write_text("f")
    (src / "docs.jsonl").write_text(
        "\n".join(
            [
                json.dumps(
                    {
                        "segments": [
                            {"modality": "text", "text": "look"},
                            {"modality": "image", "path": "a.png"},
                            {"modality": "speech", "path": "e.wav"},
                        ]
                    }
                ),
                json.dumps({"segments": [{"modality": "image", "path": "missing.png"}]}),
                json.dumps({"segments": [{"modality": "smell", "text": "?"}]}),
                "{broken json",
                json.dumps({"text": "a text document from jsonl"}),
            ]
        )
    )
    (src / "notes.txt").write_text("para one\n\npara two\n\n\n")

    cli.main(["convert", "images", "--src", str(src), "--out", str(tmp_path / "img"), "--shard-size", "1"])
    assert "wrote 2 samples to 2 shards" in capsys.readouterr().out
    cli.main(["convert", "speech", "--src", str(src), "--out", str(tmp_path / "sp")])
    out = capsys.readouterr().out
    assert "wrote 1 samples" in out and "bad_audio=1" in out
    cli.main(["convert", "interleaved", "--src", str(src / "docs.jsonl"), "--out", str(tmp_path / "il")])
    out = capsys.readouterr().out
    assert "wrote 1 samples" in out and "skipped 4: bad_json=2, missing_file=1, unknown_modality=1" in out
    cli.main(
        [
            "convert",
            "text",
            "--src",
            str(src / "notes.txt"),
            "--out",
            str(tmp_path / "tx"),
            "--split",
            "paragraph",
        ]
    )
    assert "wrote 2 samples" in capsys.readouterr().out

    from mot_lightning.data.convert import convert_pairs
    from mot_lightning.modality import Modality

    summary = convert_pairs(str(src), str(tmp_path / "img2"), Modality.IMAGE)
    assert dict(summary.skipped) == {"bad_image": 1, "no_caption": 1}

    everything = [str(tmp_path / d / "*.tar") for d in ("img", "sp", "il", "tx")]
    dm = make_datamodule(tmp_path, [SourceConfig("c", everything)], val_sets=[SourceConfig("c", everything)])
    dm.setup("validate")
    docs = unpack_checked(list(dm.val_dataloader()[0]), dm.vocab)
    assert len(docs) == 2 + 1 + 1 + 2 and sum(dm.skip_counts("val").values()) == 0
    assert sorted(text_of(d, dm.vocab) for d in docs if dm.vocab.modality_of(d).eq(0).all()) == [
        "para one",
        "para two",
    ]
