"""A fitted tokenizer file belongs to its config *and* to the data it was fitted on: the same tokenizer
config on other data is fitted again into its own file (never the other data's fit, silently), the same
data reuses its file wherever the demo corpus lies, and a refit on the same data is the same tokenizer.
A trained model (a checkpoint loaded by eval / generate / export, or a warm start) reads any data with the
tokenizer files it was trained with."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch

from mot_lightning.checkpoints.loading import load_checkpoint
from mot_lightning.data.datamodule import MultiModalDataModule
from mot_lightning.data.options import DemoCorpus, LoaderConfig, TokenizerFiles
from mot_lightning.data.pretokenized import STAMP_KEY, tokenizer_fingerprint
from mot_lightning.data.sources import SourceConfig
from mot_lightning.modality import Modality
from mot_lightning.tokenizers.image_kmeans import KMeansImageConfig, KMeansImageTokenizer
from mot_lightning.tokenizers.text import ByteTokenizer


def prepared(demo_dir: Path, tokenizers: Path, train_docs: int = 120, **kwargs) -> MultiModalDataModule:
    """A data module with a small k-means image tokenizer, after ``prepare_data`` and ``setup``."""
    image = KMeansImageTokenizer(KMeansImageConfig(resolution=32, patch_size=8, codebook_size=8, iters=3))
    dm = MultiModalDataModule(ByteTokenizer(), image, seq_len=256, loader=LoaderConfig(num_workers=0),
                              demo=DemoCorpus(str(demo_dir), train_docs=train_docs, val_docs=8),
                              tokenizer_files=TokenizerFiles(str(tokenizers)), **kwargs)
    dm.prepare_data()
    dm.setup("validate")
    return dm


def image_files(tokenizers: Path) -> list[Path]:
    return sorted(tokenizers.glob("image-KMeansImageTokenizer-*.pt"))


def image_fingerprint(dm: MultiModalDataModule) -> str:
    return tokenizer_fingerprint(dm.tokenizers[Modality.IMAGE])


def test_other_data_gets_its_own_fit_and_the_same_data_reuses_it(tmp_path, capsys):
    tokenizers = tmp_path / "tokenizers"
    first = prepared(tmp_path / "demo_a", tokenizers)
    [file_a] = image_files(tokenizers)
    assert "fitting the image tokenizer" in capsys.readouterr().out

    # the same corpus in another folder is the same data: loaded, not fitted again
    moved = prepared(tmp_path / "demo_moved", tokenizers)
    assert "fitting" not in capsys.readouterr().out and image_files(tokenizers) == [file_a]
    assert image_fingerprint(moved) == image_fingerprint(first)

    # another demo corpus (fewer documents): a second file, fitted on that corpus
    other = prepared(tmp_path / "demo_b", tokenizers, train_docs=60)
    assert "fitting the image tokenizer" in capsys.readouterr().out
    files = image_files(tokenizers)
    assert len(files) == 2 and file_a in files
    assert image_fingerprint(other) != image_fingerprint(first)

    # your own shards (here corpus b's, as data.sources) under the same tokenizer dir: fitted on them
    shards = str(tmp_path / "demo_b" / "train" / "image_caption-*.tar")
    own = [SourceConfig("images", shards, modalities=["text", "image"])]
    mine = prepared(tmp_path / "unused", tokenizers, sources=own, val_sets=[])
    out = capsys.readouterr().out
    assert "fitting the image tokenizer" in out and "demo_b/train/image_caption-*.tar" in out
    assert len(image_files(tokenizers)) == 3
    stamp = mine.tokenizer_stamp()["image"]
    assert Path(stamp["file"]) in image_files(tokenizers) and Path(stamp["file"]) not in files

    # a refit on the same data (a fresh tokenizer folder) is the same tokenizer: checkpoints stamped with
    # the first fit's fingerprint still resume after a refit
    again = prepared(tmp_path / "demo_a", tmp_path / "fresh")
    assert image_fingerprint(again) == image_fingerprint(first)
    assert [f.name for f in image_files(tmp_path / "fresh")] == [file_a.name]


def stamped_checkpoint(dm: MultiModalDataModule, path: Path, **hparams) -> Path:
    """A checkpoint file holding what `mot fit` records of ``dm``'s tokenizers (its data module state)."""
    torch.save({type(dm).__qualname__: {STAMP_KEY: dm.tokenizer_stamp()}, **hparams}, path)
    return path


def unprepared(tokenizers: Path, codebook_size: int = 8, **kwargs) -> MultiModalDataModule:
    image = KMeansImageTokenizer(KMeansImageConfig(resolution=32, patch_size=8, codebook_size=codebook_size,
                                                   iters=3))
    return MultiModalDataModule(ByteTokenizer(), image, seq_len=256, loader=LoaderConfig(num_workers=0),
                                tokenizer_files=TokenizerFiles(str(tokenizers)), **kwargs)


def test_a_trained_model_reads_other_data_with_its_own_tokenizers(tmp_path, capsys):
    """eval / generate / export (``build_cli(checkpoint=...)``) and warm starts take the checkpoint's fitted
    files for other data: no fit on that data, and the model's own codes."""
    trained = prepared(tmp_path / "demo_a", tmp_path / "tokenizers")
    [file_a] = image_files(tmp_path / "tokenizers")
    ckpt = load_checkpoint(stamped_checkpoint(trained, tmp_path / "trained.ckpt"), mmap=True)
    shards = str(tmp_path / "demo_a" / "train" / "image_caption-*.tar")
    own = {"sources": [SourceConfig("images", shards, modalities=["text", "image"])], "val_sets": []}
    capsys.readouterr()

    dm = unprepared(tmp_path / "elsewhere", **own)
    assert dm.use_tokenizers_of(ckpt) == {Modality.IMAGE: str(file_a)}
    dm.prepare_data()
    dm.setup("validate")
    assert "fitting" not in capsys.readouterr().out and not (tmp_path / "elsewhere").exists()
    assert image_fingerprint(dm) == image_fingerprint(trained)
    assert dm.tokenizer_stamp()["image"]["file"] == str(file_a)

    # without the checkpoint, the files in the folder are other data's fits: not loaded, but named
    with pytest.raises(FileNotFoundError, match=f"holds fits of this class .*{file_a.name}.*tokenizer_files.files"):
        unprepared(tmp_path / "tokenizers", **own).setup("validate")

    # another tokenizer config is not the checkpoint's file: fitted on the data as usual
    assert unprepared(tmp_path / "elsewhere", codebook_size=16, **own).use_tokenizers_of(ckpt) == {}
    # a file the user names wins
    named = unprepared(tmp_path / "elsewhere", **own)
    named.tokenizer_files.files = {Modality.IMAGE: "mine.pt"}
    assert named.use_tokenizers_of(ckpt) == {} and named.tokenizer_files.files == {Modality.IMAGE: "mine.pt"}
    # a recorded file that is gone here: nothing taken
    file_a.rename(tmp_path / "moved.pt")
    assert unprepared(tmp_path / "elsewhere", **own).use_tokenizers_of(ckpt) == {}
    (tmp_path / "moved.pt").rename(file_a)

    # `mot fit --ckpt_path FILE` / `validate` / `test` and a warm start (model.init_from) take them the same
    # way, before the data is prepared
    from mot_lightning.lit_cli import checkpoint_tokenizers
    from mot_lightning.training.warm_start import WarmStart
    from tests.app.controls_run import tiny_module

    resumed = unprepared(tmp_path / "elsewhere", **own)
    checkpoint_tokenizers(str(tmp_path / "trained.ckpt"), None, resumed)
    assert resumed.tokenizer_files.files == {Modality.IMAGE: str(file_a)}
    warm = unprepared(tmp_path / "elsewhere", **own)
    checkpoint_tokenizers(None, tiny_module(init_from=WarmStart(checkpoint=str(tmp_path / "trained.ckpt"))), warm)
    assert warm.tokenizer_files.files == {Modality.IMAGE: str(file_a)}
    cold = unprepared(tmp_path / "elsewhere", **own)
    checkpoint_tokenizers("last", tiny_module(), cold)  # `last`: this run's own checkpoint, on its own data
    assert cold.tokenizer_files.files == {}


def test_a_fit_reads_at_most_fit_items_and_says_what_it_left(tmp_path, caplog):
    """``data.tokenizer_files.fit_items`` bounds what a prepare_data fit decodes and keeps in memory (all of
    a large data set otherwise); the cap is part of the file name, and reaching it is logged."""
    image = KMeansImageTokenizer(KMeansImageConfig(resolution=32, patch_size=8, codebook_size=8, iters=3))
    kwargs = {"seq_len": 256, "loader": LoaderConfig(num_workers=0),
              "demo": DemoCorpus(str(tmp_path / "demo"), train_docs=120, val_docs=8)}
    with caplog.at_level(logging.INFO, logger="mot_lightning.tokenizers"):
        capped = MultiModalDataModule(ByteTokenizer(), image, **kwargs,
                                      tokenizer_files=TokenizerFiles(str(tmp_path / "tok"), fit_items=30))
        capped.prepare_data()
    read = [r.getMessage() for r in caplog.records if r.getMessage().startswith("images: ")]
    assert len(read) == 1 and sum(int(n) for n in re.findall(r"(\d+) (?:for fitting|held out)", read[0])) == 30
    assert any("read the first 30 items" in r.getMessage() for r in caplog.records)

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mot_lightning.tokenizers"):
        whole = MultiModalDataModule(ByteTokenizer(), image, **kwargs,
                                     tokenizer_files=TokenizerFiles(str(tmp_path / "tok")))  # default: 20,000
        whole.prepare_data()
    read = [r.getMessage() for r in caplog.records if r.getMessage().startswith("images: ")]
    assert sum(int(n) for n in re.findall(r"(\d+) (?:for fitting|held out)", read[0])) > 30
    assert not any("read the first" in r.getMessage() for r in caplog.records)
    assert len(image_files(tmp_path / "tok")) == 2  # one file per cap

    with pytest.raises(ValueError, match="fit_items must be >= 1 or null"):
        TokenizerFiles(fit_items=0)


def test_by_default_every_training_source_is_fitted_on_and_a_modality_without_data_is_named(tmp_path):
    """With ``data.sources`` and no ``fit_data``, the fit reads every source (an image source and a speech
    source each feed their tokenizer); fit data without a modality's items is refused, naming it."""
    from mot_lightning.data.demo import DemoConfig
    from mot_lightning.tokenizers.speech import SpeechUnitConfig, SpeechUnitTokenizer

    DemoConfig(out=str(tmp_path / "demo"), train_docs=120, val_docs=4).prepare()
    train = tmp_path / "demo" / "train"
    sources = [SourceConfig("images", str(train / "image_caption-*.tar"), modalities=["text", "image"]),
               SourceConfig("speech", [str(train / "speech_caption-000000.tar")], modalities=["text", "speech"])]

    def module(**files) -> MultiModalDataModule:
        image = KMeansImageTokenizer(KMeansImageConfig(resolution=32, patch_size=8, codebook_size=8, iters=3))
        speech = SpeechUnitTokenizer(SpeechUnitConfig(codebook_size=8, iters=3))
        return MultiModalDataModule(ByteTokenizer(), image, speech, seq_len=256, loader=LoaderConfig(num_workers=0),
                                    sources=sources, val_sets=[],
                                    tokenizer_files=TokenizerFiles(str(tmp_path / "tok"), **files))

    dm = module()
    assert dm.plan.fit_data() == f"{train / 'image_caption-*.tar'}::{train / 'speech_caption-000000.tar'}"
    dm.prepare_data()
    dm.setup("validate")
    assert dm.tokenizers[Modality.SPEECH].is_fitted and dm.tokenizers[Modality.IMAGE].is_fitted

    with pytest.raises(FileNotFoundError, match=r"nothing to fit on in .*image_caption.*\.wav.*fit_data"):
        module(fit_data=str(train / "image_caption-*.tar")).prepare_data()
