"""The DataModule as LightningCLI sees it: jsonargparse builds it (tokenizers by class_path) from YAML."""

from __future__ import annotations

import pytest
import yaml
from jsonargparse import ArgumentParser

from mot_lightning.data.counters import StreamCounters
from mot_lightning.data.datamodule import MultiModalDataModule
from mot_lightning.data.read import shard_samples
from mot_lightning.data.sources import SourceConfig

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
"""


def test_jsonargparse_builds_the_datamodule_from_yaml():
    parser = ArgumentParser()
    parser.add_class_arguments(MultiModalDataModule, "data")
    cfg = parser.parse_object(yaml.safe_load(CONFIG))
    dm = parser.instantiate_classes(cfg).data
    assert isinstance(dm, MultiModalDataModule)
    assert dm.vocab_size == 256 + 7 and dm.seq_len == 64 and dm.n_modalities == 1
    assert dm.val_set_names == ["val_coco"]
    assert all(isinstance(s, SourceConfig) for s in dm.sources) and dm.sources[0].weight == 2.0


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
