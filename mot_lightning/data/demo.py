"""The demo corpus: the demo world (``mot_lightning/world``) written in every shard layout.

There is one demo world, the procedural world (``world/procedural.py``, ``captions.py``), and one
document generator, its virtual shards (``world/virtual.py``: ``world://<split>/<kind>/<index>``,
generated from (seed, split, kind, index) alone). The two modes of ``data.demo`` read it differently.

The fixed mode (``data.demo.mode: fixed``, ``DemoConfig``; the quickstart's) is a finite, repeating
sample of that world: the first ``train_docs`` documents of its training stream, written as tar shards
and read every epoch (``docs/demo_data.md`` shows the files):

- ``train/image_caption-*.tar``  image-caption pairs (img2dataset layout);
- ``train/speech_caption-*.tar`` spoken caption + transcript pairs;
- ``train/interleaved-*.tar``    caption->image, image->caption, image->question, text+speech,
  text+image+speech and two-scene stories (interleaved JSON layout);
- ``train/text-*.tar``           a caption and questions with answers;
- ``val_seen/mixed-*.tar``       documents of the training distribution (own random stream);
- ``val_heldout/mixed-*.tar``    documents whose scenes show a colour/shape pair that never occurs
  in training (a compositional-generalisation split).

``train/<kind>-<i>.tar`` holds the documents of the virtual shard ``world://train/<kind>/<i>`` (the
last one cut at ``train_docs``), so the fixed corpus is the start of what the procedural mode streams.

The procedural mode (``data.demo.mode: procedural``, ``ProceduralConfig``) trains on
the endless stream of virtual shards (read when needed) and writes only what must stay fixed, under
``<data.demo.dir>/procedural/``:

- ``val_seen/mixed-*.tar``     documents of the training distribution (own seed);
- ``val_heldout/mixed-*.tar``  documents whose scenes show a held-out colour/shape pair;
- ``fit/<kind>-*.tar``         the first virtual training shards, written out for
  fitting tokenizers on (the tokenizer fitter reads files).

Same config -> byte-identical shards (tar mtimes are fixed). ``manifest.json`` is written last; its
presence marks complete files, and its generator and config must match for ``prepare()`` to keep them.
Both modes' configs answer the same four questions for the data module:
``prepare()``, ``train_sources()``, ``val_sets()``, ``fit_data()``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import webdataset as wds

from mot_lightning.data.locks import unique_temp
from mot_lightning.data.sources import SourceConfig
from mot_lightning.world import virtual

log = logging.getLogger("mot_lightning.data")
TRAIN_KINDS = virtual.KINDS  # one table of kind weights for both modes
VAL_SETS = ("val_seen", "val_heldout")
# the fixed corpus' writer; a manifest naming another one (the retired one-group world: v1) is rewritten
GENERATOR = f"mot_lightning demo v2 ({virtual.GENERATOR})"


@dataclass
class DemoConfig:
    """The fixed demo corpus: the first ``train_docs`` documents of the demo world's training stream."""

    out: str = "data/demo"
    seed: int = 0
    image_size: int = 32  # rendered side in pixels (the loader resizes to its own image_size)
    # 4000 training documents: enough that a CPU-sized model does not just memorise them (at 400 it did)
    train_docs: int = 4000  # split over the four training sources by TRAIN_KINDS
    val_docs: int = 96  # per validation set
    shard_size: int = 50  # documents per shard (>= 4 shards per source lets 2 ranks x 2 workers split by shard)
    speech: str = "builtin"  # "builtin" synthesizer or "espeak" (needs espeak-ng installed)

    def written(self) -> dict:
        """What the files on disk depend on (the manifest records it; a change rewrites them)."""
        return {k: v for k, v in asdict(self).items() if k != "out"}

    def prepare(self) -> None:
        """Generate the corpus unless ``out`` holds a complete one of this generator and config."""
        found = _read_manifest(self.out)
        if found is not None and found.get("generator") == GENERATOR and found.get("config") == self.written():
            return
        if found is not None:
            log.warning("demo corpus at %s was written by %r with %s; rewriting it for %s (tokenizers are "
                        "fitted again on the new corpus, into new files)", self.out,
                        found.get("generator"), found.get("config"), self.written())
        generate(self)

    def train_sources(self) -> list[SourceConfig]:
        return default_sources(self.out)

    def val_sets(self) -> list[SourceConfig]:
        return default_val_sets(self.out)

    def fit_data(self) -> str:
        return os.path.join(self.out, "train")

    def fit_identity(self) -> str:
        """What the documents of ``fit_data`` depend on, wherever the corpus lies (names fitted tokenizer files)."""
        return _identity(GENERATOR, self.written())


# --- writing ------------------------------------------------------------------
def generate(cfg: DemoConfig) -> dict:
    """Write the corpus into ``cfg.out`` (``train/``, ``val_*/``, ``manifest.json``: ``_write_world``)."""
    if cfg.speech not in virtual.VOICES:
        raise ValueError(f"speech must be one of {virtual.VOICES}, got {cfg.speech!r}")
    head = {"generator": GENERATOR, "mode": "fixed", "config": cfg.written()}
    return _write_world(cfg.out, head, "train", cfg.train_docs, cfg.val_docs, cfg.seed, cfg.shard_size,
                        cfg.image_size, cfg.speech)


def _write_world(out: str, head: dict, train_dir: str, train_docs: int, val_docs: int, seed: int,
                 shard_docs: int, image_size: int, voice: str = "builtin") -> dict:
    """The one corpus writer of both modes: the first ``train_docs`` documents of the world's training
    stream (``virtual.documents``; per kind by ``TRAIN_KINDS``) into ``<out>/<train_dir>/<kind>-*.tar``,
    the first ``val_docs`` of each validation split into ``<out>/<val set>/mixed-*.tar``, one virtual shard
    per tar shard, and the manifest (``head`` plus the doc/shard counts) last.

    Built in a sibling temp folder, then moved in entry by entry: other content of ``out`` (e.g. the
    tokenizer demo files in ``data/demo/tokenizers/``, or ``procedural/``) is left alone.
    """
    tmp = str(unique_temp(out.rstrip("/"), ".partial"))  # per process: nodes never share it
    shutil.rmtree(tmp, ignore_errors=True)
    manifest = {**head, train_dir: {}, "val": {}}

    def docs(split: str, kind: str, n: int) -> Iterable[dict]:
        return virtual.documents(split, kind, n, seed, shard_docs, image_size, voice)

    for kind, share in TRAIN_KINDS.items():
        n = max(1, round(train_docs * share))
        manifest[train_dir][kind] = _write(tmp, train_dir, kind, docs("train", kind, n), shard_docs)
    for name in VAL_SETS:
        manifest["val"][name] = _write(tmp, name, virtual.MIXED, docs(name, virtual.MIXED, val_docs), shard_docs)
    with open(os.path.join(tmp, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1)
    _move_in(tmp, out, [train_dir, *VAL_SETS, "manifest.json"])
    return manifest


def _move_in(tmp: str, out: str, entries: list[str]) -> None:
    os.makedirs(out, exist_ok=True)
    manifest = os.path.join(out, "manifest.json")
    if os.path.exists(manifest):
        os.remove(manifest)  # incomplete until the new one lands
    for entry in entries:
        target = os.path.join(out, entry)
        if os.path.isdir(target):
            shutil.rmtree(target)
        os.replace(os.path.join(tmp, entry), target)
    os.rmdir(tmp)


def _write(root: str, split: str, prefix: str, samples: Iterable[dict], shard_size: int) -> dict:
    folder = os.path.join(root, split)
    os.makedirs(folder, exist_ok=True)
    count = 0
    with wds.ShardWriter(
        os.path.join(folder, f"{prefix}-%06d.tar"), maxcount=shard_size, verbose=0, mtime=0
    ) as sink:
        for sample in samples:  # written as generated: the corpus is never held in memory
            sink.write(sample)
            count += 1
        shards = sink.shard
    # one line per split and kind: the progress of prepare_data and `mot data demo`
    log.info("demo corpus: wrote %s/%s: %d documents in %d shards", split, prefix, count, shards)
    return {
        "docs": count,
        "shards": shards,
        "pattern": f"{split}/{prefix}-{{000000..{shards - 1:06d}}}.tar",
    }


def _read_manifest(out: str) -> dict | None:
    path = os.path.join(out, "manifest.json")
    if not os.path.isfile(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def default_sources(out: str = "data/demo") -> list[SourceConfig]:
    """The training sources of the demo corpus (what a YAML would list)."""
    manifest = _manifest(out)
    return [
        SourceConfig(kind, os.path.join(out, info["pattern"]), weight=TRAIN_KINDS[kind])
        for kind, info in manifest["train"].items()
    ]


def default_val_sets(out: str = "data/demo") -> list[SourceConfig]:
    manifest = _manifest(out)
    return [SourceConfig(name, os.path.join(out, info["pattern"])) for name, info in manifest["val"].items()]


# --- procedural mode ------------------------------------------------------------
PROCEDURAL_DIR = "procedural"  # the procedural mode's files, below data.demo.dir


@dataclass
class ProceduralConfig:
    """The procedural demo: virtual training shards, fixed validation and tokenizer-fitting shards."""

    out: str = "data/demo/procedural"
    seed: int = 0
    image_size: int = 32  # rendered side in pixels (the data module renders at its own image size)
    fit_docs: int = 4000  # written to fit/ for tokenizer fitting, split over the kinds by TRAIN_KINDS
    val_docs: int = 512  # per validation set (benchmarks/README.md: how its standard error shrinks)
    shard_docs: int = 50  # documents per virtual shard (and per written shard)
    virtual_shards: int = 100_000  # virtual training shards per kind: 5M documents each, never written

    def written(self) -> dict:
        """What the files on disk depend on (the manifest records it; a change rewrites them)."""
        return {k: v for k, v in asdict(self).items() if k not in ("out", "virtual_shards")}

    def prepare(self) -> None:
        """Write the fixed files unless ``out`` holds them for this config."""
        found = _read_manifest(self.out) or {}
        if found.get("generator") != virtual.GENERATOR or found.get("config") != self.written():
            generate_procedural(self)

    def train_sources(self) -> list[SourceConfig]:
        """One source of ``virtual_shards`` virtual shards per kind, weighted as the fixed corpus' sources."""
        return [SourceConfig(kind, virtual.shard_pattern("train", kind, self.virtual_shards, self.seed,
                                                         self.shard_docs, self.image_size), weight=weight)
                for kind, weight in TRAIN_KINDS.items()]

    def val_sets(self) -> list[SourceConfig]:
        if not os.path.isfile(os.path.join(self.out, "manifest.json")):
            raise FileNotFoundError(f"no procedural demo files at {self.out!r} (missing manifest.json): "
                                    "the data module's prepare_data() writes them (`mot fit` calls it)")
        return default_val_sets(self.out)

    def fit_data(self) -> str:
        return os.path.join(self.out, "fit")

    def fit_identity(self) -> str:
        """What the documents of ``fit_data`` depend on, wherever they lie (names fitted tokenizer files)."""
        return _identity(virtual.GENERATOR, self.written())


def _identity(generator: str, written: dict) -> str:
    """A corpus' training documents as its generator and config determine them (the validation size aside)."""
    return f"{generator} " + json.dumps({k: v for k, v in written.items() if k != "val_docs"}, sort_keys=True)


def generate_procedural(cfg: ProceduralConfig) -> dict:
    """Write ``fit/``, ``val_seen/``, ``val_heldout/`` and ``manifest.json`` (last) into ``cfg.out``.

    The validation sets are the virtual shards ``world://val_seen/mixed/<i>`` and
    ``world://val_heldout/mixed/<i>`` (own splits, so own random streams) cut to ``val_docs``; ``fit/``
    holds the first virtual training shards of each kind (``_write_world``).
    """
    head = {"generator": virtual.GENERATOR, "mode": "procedural", "config": cfg.written()}
    return _write_world(cfg.out, head, "fit", cfg.fit_docs, cfg.val_docs, cfg.seed, cfg.shard_docs,
                        cfg.image_size)


def _manifest(out: str) -> dict:
    manifest = _read_manifest(out)
    if manifest is None:
        raise FileNotFoundError(
            f"no demo corpus at {out!r} (missing manifest.json); run `mot data demo --out {out}`"
        )
    return manifest
