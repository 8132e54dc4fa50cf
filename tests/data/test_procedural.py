"""The procedural demo mode: virtual world:// shards through the real reader and data module, fixed
validation sets written once, a stream that does not repeat, and the configs/procedural.yaml overlay."""
from __future__ import annotations

import hashlib
import json
import os
import re

import pytest
import yaml

from mot_lightning.data.demo import ProceduralConfig, generate_procedural
from mot_lightning.data.documents import parse_sample
from mot_lightning.data.options import DemoCorpus
from mot_lightning.modality import Modality
from mot_lightning.run_identity import experiment_config, identify
from mot_lightning.shards.reader import UNREADABLE_SHARD, shard_samples
from mot_lightning.shards.urls import expand
from mot_lightning.world import virtual
from mot_lightning.world.captions import parse_caption
from mot_lightning.world.procedural import HELD_OUT
from mot_lightning.world.virtual import VirtualShard, shard_pattern

from .helpers import make_datamodule, text_of, unpack_checked

HELD_OUT_WORDS = [f"{colour} {shape}" for colour, shape in HELD_OUT]  # "purple triangle" also hits "...s"


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, int, str]] = []

    def add(self, name: str, n: int = 1, detail: str = "") -> None:
        self.events.append((name, n, detail))


def read(urls: list[str]) -> list[dict]:
    """The samples of ``urls`` as the reader gives them, minus the ``__url__`` it adds."""
    counts = Recorder()
    samples = [{k: v for k, v in s.items() if k != "__url__"} for s in shard_samples(urls, counts)]
    assert counts.events == []
    return samples


def test_a_world_url_always_gives_the_same_bytes_and_other_urls_other_documents():
    url = VirtualShard("train", "interleaved", 7, seed=3, docs=12).url
    assert url == "world://train/interleaved/000007?seed=3&docs=12&size=32"
    assert VirtualShard.parse(url) == VirtualShard("train", "interleaved", 7, seed=3, docs=12)
    first = read([url])
    assert len(first) == 12 and first == read([url]) == list(virtual.samples(url))
    for other in (VirtualShard("train", "interleaved", 8, seed=3, docs=12),
                  VirtualShard("train", "interleaved", 7, seed=4, docs=12),
                  VirtualShard("val_seen", "interleaved", 7, seed=3, docs=12)):
        docs = read([other.url])
        assert not {s["json"] for s in docs} & {s["json"] for s in first}
    two_shards = read([url, VirtualShard("train", "interleaved", 8, docs=12).url])
    assert len({s["__key__"] for s in two_shards}) == 24


def test_a_bad_world_url_is_one_unreadable_shard_and_the_stream_goes_on():
    counts = Recorder()
    good = VirtualShard("train", "text", 0, docs=3).url
    samples = list(shard_samples(["world://train/text/000001?seed=0&dcos=5", good], counts))
    assert len(samples) == 3
    assert [name for name, _, _ in counts.events] == [UNREADABLE_SHARD]
    assert "unknown query keys" in counts.events[0][2]
    with pytest.raises(ValueError, match="split"):
        VirtualShard("training", "text", 0)


def test_every_kind_has_the_fixed_corpus_layouts_and_decodes():
    layouts = {"image_caption": {"png", "txt"}, "speech_caption": {"wav", "txt"}, "text": {"txt"}}
    seen_interleaved: set[tuple[str, ...]] = set()
    for kind in (*virtual.KINDS, virtual.MIXED):
        for sample in read([VirtualShard("train", kind, 0, docs=40).url]):
            members = set(sample) - {"__key__"}
            if kind in layouts:
                assert members == layouts[kind]
            doc = parse_sample(sample, frozenset(Modality), 32)
            assert doc.segments and not doc.dropped
            if "json" in members:
                seen_interleaved.add(tuple(s.modality.label for s in doc.segments))
    assert {("text", "image"), ("image", "text"), ("text", "speech"), ("text", "image", "speech"),
            ("text", "image", "text", "image")} <= seen_interleaved


@pytest.mark.slow
def test_the_first_20000_training_images_and_captions_never_repeat():
    renders, pairs = set(), set()
    for sample in shard_samples(expand(shard_pattern("train", "image_caption", 400, docs=50)), Recorder()):
        renders.add(hashlib.sha1(sample["png"]).digest())
        pairs.add((sample["txt"], sample["png"]))
    assert len(pairs) == 20_000
    assert len(renders) == 20_000, f"{20_000 - len(renders)} repeated renders"


def test_training_text_never_names_a_held_out_pair_and_held_out_documents_always_do():
    train = read([VirtualShard("train", kind, i, docs=50).url for kind in ("text", "image_caption", "mixed")
                  for i in range(4)])
    texts = [_text(s) for s in train]
    assert not [t for t in texts if any(w in t for w in HELD_OUT_WORDS)]
    held = read([VirtualShard("val_heldout", "mixed", i, docs=50).url for i in range(4)])
    captioned = 0
    for sample in held:
        groups = parse_caption(_text(sample), strict=False)  # questions alone name no complete group
        if groups:
            captioned += 1
            assert any((g.colour, g.shape) in HELD_OUT for g in groups), _text(sample)
    assert captioned > 150


def _text(sample: dict) -> str:
    if "txt" in sample:
        return sample["txt"].decode()
    return " ".join(s["text"] for s in json.loads(sample["json"])["segments"] if s["modality"] == "text")


def test_prepare_writes_validation_sets_once_atomically_and_again_when_their_config_changes(tmp_path):
    cfg = ProceduralConfig(out=str(tmp_path / "p"), fit_docs=40, val_docs=30, shard_docs=8)
    cfg.prepare()
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["val"]["val_seen"]["docs"] == manifest["val"]["val_heldout"]["docs"] == 30
    assert manifest["val"]["val_seen"]["shards"] == 4 and not (tmp_path / "p.partial").exists()
    assert sum(info["docs"] for info in manifest["fit"].values()) == 40
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "p").rglob("*.tar")}
    cfg.prepare()  # nothing to do
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "p").rglob("*.tar")} == written
    seen = read(expand(str(tmp_path / "p" / manifest["val"]["val_seen"]["pattern"])))
    # the written set is the virtual val_seen shards, cut to val_docs
    assert seen == read([VirtualShard("val_seen", "mixed", i, docs=8).url for i in range(4)])[:30]
    ProceduralConfig(out=str(tmp_path / "p"), fit_docs=40, val_docs=20, shard_docs=8).prepare()
    assert json.loads((tmp_path / "p" / "manifest.json").read_text())["val"]["val_seen"]["docs"] == 20
    again = ProceduralConfig(out=str(tmp_path / "q"), fit_docs=40, val_docs=30, shard_docs=8)
    generate_procedural(again)
    assert all((tmp_path / "q" / p.relative_to(tmp_path / "p")).read_bytes() == p.read_bytes()
               for p in (tmp_path / "p").rglob("fit/*.tar"))


def test_procedural_data_module_streams_every_layout_and_validates_on_fixed_sets(tmp_path):
    demo = DemoCorpus(str(tmp_path / "demo"), train_docs=40, val_docs=24, mode="procedural",
                      virtual_shards=50, shard_docs=10)
    dm = make_datamodule(tmp_path, None, seq_len=320, demo=demo, train_batches_per_epoch=12)
    dm.prepare_data()
    assert (tmp_path / "demo" / "procedural" / "manifest.json").is_file()
    assert not (tmp_path / "demo" / "manifest.json").exists()  # the fixed corpus is not written
    dm.setup("fit")
    assert [s.name for s in dm.train_stream.sources] == list(virtual.KINDS)
    assert all(len(s.urls) == 50 and s.urls[0].startswith("world://train/") for s in dm.train_stream.sources)
    docs = unpack_checked(list(dm.train_dataloader()), dm.vocab)
    modalities = [set(dm.vocab.modality_of(d).tolist()) for d in docs]
    assert {0, 1} in modalities and {0, 2} in modalities and {0} in modalities and {0, 1, 2} in modalities
    texts = [text_of(d, dm.vocab) for d in docs]
    assert any("question:" in t for t in texts) and any(t.startswith("first, ") for t in texts)
    assert any(t.startswith("caption: ") for t in texts)
    assert not any(w in t for w in HELD_OUT_WORDS for t in texts)
    assert len(set(texts)) > 0.9 * len(texts)
    counts = {name: len(unpack_checked(list(loader), dm.vocab))
              for name, loader in zip(dm.val_set_names, dm.val_dataloader(), strict=True)}
    assert counts == {"val_seen": 24, "val_heldout": 24}
    assert sum(dm.skip_counts().values()) == 0


def test_procedural_tokenizers_and_files_live_apart_from_the_fixed_corpus(tmp_path):
    fixed = DemoCorpus(str(tmp_path / "demo"))
    procedural = DemoCorpus(str(tmp_path / "demo"), mode="procedural", virtual_shards=5, shard_docs=7)
    assert fixed.tokenizer_dir("tok") == "tok"
    assert procedural.tokenizer_dir("tok") == os.path.join("tok", "procedural")
    assert fixed.corpus(32).fit_data() == str(tmp_path / "demo" / "train")
    cfg = procedural.corpus(48)
    assert cfg.fit_data() == str(tmp_path / "demo" / "procedural" / "fit") and cfg.val_docs == 512
    (captions,) = [s for s in cfg.train_sources() if s.name == "image_caption"]
    assert captions.urls == "world://train/image_caption/{000000..000004}?seed=0&docs=7&size=48"
    assert fixed.corpus(32).val_docs == 96
    default = DemoCorpus(mode="procedural").corpus(32).train_sources()
    assert [len(expand(s.urls)) for s in default] == [100_000] * 4  # 5M documents per kind
    assert [s.weight for s in default] == list(virtual.KINDS.values())
    with pytest.raises(ValueError, match="data.demo"):
        DemoCorpus(val_docs=0)


def test_run_identity_includes_the_mode(capsys):
    from mot_lightning.commands.fit import cli_main
    from tests.app.conftest import CONFIGS

    resolved = {}
    for name, extra in (("fixed", []), ("procedural", ["--config", str(CONFIGS / "procedural.yaml")])):
        with pytest.raises(SystemExit):
            cli_main(["fit", "--config", str(CONFIGS / "speech/mot.yaml"), *extra, "--print_config"])
        resolved[name] = yaml.safe_load(capsys.readouterr().out)
    assert experiment_config(resolved["procedural"])["data"]["demo"]["mode"] == "procedural"
    fixed, procedural = (identify(resolved[mode], "speech/mot") for mode in ("fixed", "procedural"))
    assert fixed.hash != procedural.hash and fixed.run_id != procedural.run_id


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["chameleon", "speech", "transfusion"])
def test_procedural_overlay_trains_every_setting(setting, tmp_path_factory, tmp_path):
    from tests.app.conftest import CONFIGS, TRANSFUSION, run_fit

    root = tmp_path_factory.getbasetemp() / "procedural_env"  # one world and tokenizer dir for the three
    env = {"demo_dir": str(root / "demo"), "tokenizer_dir": str(root / "tokenizers")}
    extra = TRANSFUSION if setting == "transfusion" else []
    run_fit(["--config", str(CONFIGS / f"{setting}/mot.yaml"), "--config", str(CONFIGS / "procedural.yaml"),
             "--data.demo.train_docs", "400", "--data.demo.val_docs", "16", "--data.seq_len", "256",
             "--trainer.fast_dev_run", "1", *extra], env, tmp_path)
    assert (root / "demo" / "procedural" / "manifest.json").is_file()
    assert list((root / "tokenizers" / "procedural").glob("image-*.pt"))
    assert re.fullmatch(r"s0-[0-9a-f]{8}", next((tmp_path / setting / "mot").iterdir()).name)
