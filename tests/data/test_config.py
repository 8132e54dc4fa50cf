"""The DataModule as LightningCLI sees it: jsonargparse builds it (tokenizers by class_path, grouped
settings as typed dataclasses) from YAML; old flat keys are named with their new place."""

from __future__ import annotations

import argparse

import pytest
import yaml
from jsonargparse import ArgumentParser

from mot_lightning.data.counters import StreamCounters
from mot_lightning.data.datamodule import MultiModalDataModule
from mot_lightning.data.options import MOVED_KEYS, LoaderConfig, TokenizerFiles, moved_data_keys
from mot_lightning.data.sources import SourceConfig
from mot_lightning.modality import Modality
from mot_lightning.shards.reader import shard_samples

from .helpers import png_bytes, write_tar

CONFIG = """
data:
  text_tokenizer:
    class_path: mot_lightning.tokenizers.text.ByteTokenizer
  sources:
    - name: captions
      urls: /shards/cc-{000000..000009}.tar
      weight: 2.0
      modalities: [text, image]
    - name: books
      urls: [/shards/books-000000.tar, /shards/books-000001.tar]
  val_sets:
    - name: val_coco
      urls: /shards/coco-val-000000.tar
  modalities: [text]
  seq_len: 64
  loader:
    num_workers: 0
    overlong: truncate
  demo:
    dir: /tmp/elsewhere
  tokenizer_files:
    dir: /tmp/tokenizers
    files: {image: /tmp/vq.pt, Speech: /tmp/units.pt}
    train: {max_steps: 7}
"""


def _parser() -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(MultiModalDataModule, "data")
    return parser


def test_jsonargparse_builds_the_datamodule_from_yaml():
    parser = _parser()
    cfg = parser.parse_object(yaml.safe_load(CONFIG))
    dm = parser.instantiate_classes(cfg).data
    assert isinstance(dm, MultiModalDataModule)
    assert dm.vocab_size == 256 + 7 and dm.seq_len == 64 and dm.n_modalities == 1
    assert dm.val_set_names == ["val_coco"]
    assert all(isinstance(s, SourceConfig) for s in dm.sources) and dm.sources[0].weight == 2.0
    assert dm.loader == LoaderConfig(num_workers=0, overlong="truncate") and dm.demo.dir == "/tmp/elsewhere"
    assert isinstance(dm.tokenizer_files, TokenizerFiles) and dm.tokenizer_files.train.max_steps == 7
    assert dm.tokenizer_files.files == {Modality.IMAGE: "/tmp/vq.pt", Modality.SPEECH: "/tmp/units.pt"}
    assert set(dm.tokenizers) == set(Modality) and dm.tokenizers[Modality.IMAGE] is None


def test_grouped_keys_are_typed():
    with pytest.raises(argparse.ArgumentError, match="data.loader.overlong"):
        _parser().parse_args(["--data.text_tokenizer", "mot_lightning.tokenizers.text.ByteTokenizer",
                              "--data.loader.overlong", "cut"])
    with pytest.raises(ValueError, match="unknown modality 'smell'"):
        TokenizerFiles(files={"smell": "x.pt"})
    with pytest.raises(ValueError, match="caption_dropout"):
        LoaderConfig(caption_dropout=1.0)


def test_old_flat_keys_are_named_with_their_new_place(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("data:\n  seq_len: 64\n  num_workers: 0\n  demo_dir: d\n"
                   "  tokenizer_files: {image: x.pt}\n")
    message = moved_data_keys(["fit", "--config", str(old), "--data.train_batches_per_epoch", "3",
                               "--data.tokenizer_train.max_steps=5", "--data.loader.num_workers", "0"])
    for line in ("data.num_workers -> data.loader.num_workers (" + str(old),
                 "data.demo_dir -> data.demo.dir",
                 "data.tokenizer_files.<modality> -> data.tokenizer_files.files.<modality>",
                 "data.train_batches_per_epoch -> data.loader.train_batches_per_epoch (command line)",
                 "data.tokenizer_train -> data.tokenizer_files.train (command line)"):
        assert line in message
    assert "data.loader.num_workers (command line)" not in message  # the new key is fine
    assert moved_data_keys(["fit", "--data.loader.num_workers", "0", "--data.tokenizer_files.files",
                            "{image: x.pt}"]) is None
    # every old key has a new home that the data module accepts
    parser = _parser()
    for key, new in MOVED_KEYS.items():
        group, field = new.split(".")
        assert field in parser.get_defaults().data[group], (key, new)


@pytest.mark.parametrize("cut", [700, 2000, 3100, 9000, 9800])
def test_truncated_shard_keeps_only_complete_samples(tmp_path, cut):
    """Wherever a shard is cut, what comes out is complete samples in order, and the shard counts once."""
    samples = [{"__key__": f"k{i}", "png": png_bytes(i, 8), "txt": f"caption {i}".encode()} for i in range(6)]
    path = write_tar(str(tmp_path / "a.tar"), samples)
    with open(path, "r+b") as fh:
        fh.truncate(cut)
    good = write_tar(str(tmp_path / "b.tar"), [{"__key__": "z", "txt": b"after"}])
    counters = StreamCounters()
    out = list(shard_samples([path, good], counters))
    assert out[-1]["__key__"] == "z"
    kept = out[:-1]
    assert [s["__key__"] for s in kept] == [f"k{i}" for i in range(len(kept))]
    assert all(s["png"] == samples[i]["png"] and s["txt"] == samples[i]["txt"] for i, s in enumerate(kept))
    assert counters.totals()["unreadable_shard"] == 1
    if cut == 9800:  # cut inside k2.png's data: k2 is the sample in flight, k0 and k1 are kept
        assert len(kept) == 2
