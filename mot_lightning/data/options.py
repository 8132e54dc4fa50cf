"""The grouped arguments of ``MultiModalDataModule`` (typed, so YAML keys are checked).

In YAML::

    data:
      seq_len: 256                 # top level: tokenizers, sources, val_sets, modalities,
      batch_size: 8                #            seq_len, batch_size, seed
      loader:                      # how documents are read, packed and batched (LoaderConfig)
        num_workers: 1
        train_batches_per_epoch: 100
      demo:                        # the demo corpus used when `sources` is null (DemoCorpus)
        dir: data/demo
        mode: fixed                # a finite sample of the demo world; procedural: its endless stream
                                   # (configs/procedural.yaml)
      tokenizer_files:             # where fitted tokenizers live and how they are fitted (TokenizerFiles)
        dir: data/tokenizers
        files: {image: runs/tokenizers/vqvae_image.pt}

``MOVED_KEYS`` maps the flat keys of earlier versions to their new place;
``moved_data_keys`` finds them in command-line arguments and ``--config`` YAML
files so ``mot`` can name the new key instead of only rejecting the old one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import yaml

from mot_lightning.data.demo import PROCEDURAL_DIR, DemoConfig, ProceduralConfig
from mot_lightning.data.documents import DecodeLimits
from mot_lightning.data.mix import MixEntry, check_entries
from mot_lightning.data.stream import StreamConfig
from mot_lightning.modality import Modality
from mot_lightning.tokenizers.fitting import TrainConfig


@dataclass
class LoaderConfig:
    """How documents are read, packed and batched (training and validation loaders)."""

    num_workers: int = 2  # DataLoader worker processes (decode + tokenize + pack run in them)
    train_batches_per_epoch: int = 1000  # length of one training epoch on every rank (equal per rank)
    val_batch_size: int | None = None  # rows per validation batch; None = batch_size
    shuffle_buffer: int = 64  # documents held for shuffling in each training worker (0 = none)
    overlong: Literal["skip", "truncate"] = "skip"  # documents longer than seq_len (skipped ones: too_long)
    pack_open_rows: int = 4  # rows filled at once by first-fit packing (less padding); 1 = greedy, in order
    pin_memory: bool = False
    # P(a training document holding an image is encoded without its text): classifier-free guidance
    # training (Transfusion uses 0.1); validation is never dropped
    caption_dropout: float = 0.0
    # side images are resized/centre-cropped to before the image tokenizer; None = the image
    # tokenizer's config.resolution (32 without one)
    image_size: int | None = None
    # larger media are skipped from their header, never decoded (image_too_large / audio_too_long)
    max_image_pixels: int = 8192 * 8192
    max_audio_seconds: float = 600.0
    # the most one document may cost, checked before decoding (member_too_large / too_many_members /
    # doc_too_large): bytes of one tar member, media files named, pixels and audio seconds summed
    max_member_bytes: int = 256 * 2**20
    max_doc_members: int = 64
    max_doc_pixels: int = 2 * 8192 * 8192
    max_doc_audio_seconds: float = 1800.0
    # seconds to wait for a batch from the workers before failing (0 = forever); the first batch of
    # an epoch includes starting the workers and filling the shuffle buffer
    timeout: float = 600.0
    # warn once per stream when more than this fraction of its documents is skipped (None = never)
    skip_warning: float | None = 0.1
    # training source weights by optimizer step (data/mix.py), e.g.
    # [{step: 0, weights: {image_caption: 3, text: 1}}, {step: 200, weights: {image_caption: 1}}]; None = the
    # sources' own `weight:` throughout
    weights_schedule: list[MixEntry] | None = None

    def __post_init__(self) -> None:
        if self.weights_schedule is not None:
            self.weights_schedule = check_entries(self.weights_schedule)  # source names: at setup
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError(f"data.loader.caption_dropout must be in [0, 1), got {self.caption_dropout}")
        if self.timeout < 0 or (self.skip_warning is not None and not 0.0 <= self.skip_warning <= 1.0):
            raise ValueError(f"data.loader needs timeout >= 0 and skip_warning in [0, 1] (or null), got "
                             f"timeout={self.timeout}, skip_warning={self.skip_warning}")
        self.decode_limits()  # checks them
        if self.num_workers < 0 or self.train_batches_per_epoch < 1 or self.pack_open_rows < 1:
            raise ValueError(f"data.loader needs num_workers >= 0, train_batches_per_epoch >= 1 and "
                             f"pack_open_rows >= 1, got {self}")

    def decode_limits(self) -> DecodeLimits:
        return DecodeLimits(self.max_image_pixels, self.max_audio_seconds, self.max_member_bytes,
                            self.max_doc_members, self.max_doc_pixels, self.max_doc_audio_seconds)

    def stream_config(self, seq_len: int, batch_size: int, image_size: int, seed: int,
                      infinite: bool, require: frozenset[Modality] = frozenset()) -> StreamConfig:
        """A stream's settings: training (``infinite``) shuffles and drops captions, validation does neither."""
        return StreamConfig(
            seq_len=seq_len, batch_size=batch_size, image_size=image_size, infinite=infinite,
            shuffle_buffer=self.shuffle_buffer if infinite else 0, overlong=self.overlong,
            open_rows=self.pack_open_rows, seed=seed, caption_dropout=self.caption_dropout if infinite else 0.0,
            limits=self.decode_limits(), require=require)


@dataclass
class DemoCorpus:
    """The demo corpus read when ``sources`` is null (``prepare_data`` writes what it needs).

    Both modes draw from the one demo world (``world/procedural.py``, generated by ``world/virtual.py``).
    ``mode``: ``fixed`` is a finite, repeating sample of it: the first ``train_docs`` documents of its
    training stream written as tar shards in ``dir``, the same every epoch (``data/demo.py``; rewritten
    when the manifest names another generator or config). ``procedural`` trains on the endless stream of
    virtual shards (``virtual_shards`` per kind of ``shard_docs`` documents, generated as they are read)
    and validates on fixed shards written to ``<dir>/procedural/``; there ``train_docs`` documents are
    written only to fit tokenizers on, and tokenizers fitted on them are kept in
    ``<tokenizer_files.dir>/procedural/``.
    ``val_docs``: documents per validation set; None = 96 (fixed) or 512 (procedural, where the standard
    error of the validation loss is small enough for the demo comparisons: benchmarks/README.md).
    """

    dir: str = "data/demo"
    train_docs: int = DemoConfig.train_docs  # fixed: the training corpus; procedural: the tokenizer-fit docs
    val_docs: int | None = None  # per validation set; None = the mode's default (above)
    mode: Literal["fixed", "procedural"] = "fixed"
    virtual_shards: int = ProceduralConfig.virtual_shards  # procedural: per training kind
    shard_docs: int = ProceduralConfig.shard_docs  # procedural: documents per virtual shard

    def __post_init__(self) -> None:
        counts = (self.train_docs, 1 if self.val_docs is None else self.val_docs, self.virtual_shards,
                  self.shard_docs)
        if min(counts) < 1:
            raise ValueError(f"data.demo needs train_docs, val_docs, virtual_shards and shard_docs >= 1, "
                             f"got {self}")

    def corpus(self, image_size: int) -> DemoConfig | ProceduralConfig:
        """The generator config of this mode (images rendered at ``image_size`` in procedural mode)."""
        if self.mode == "fixed":
            val_docs = self.val_docs or DemoConfig.val_docs
            return DemoConfig(out=self.dir, train_docs=self.train_docs, val_docs=val_docs)
        return ProceduralConfig(out=os.path.join(self.dir, PROCEDURAL_DIR), image_size=image_size,
                                fit_docs=self.train_docs, val_docs=self.val_docs or ProceduralConfig.val_docs,
                                shard_docs=self.shard_docs, virtual_shards=self.virtual_shards)

    def tokenizer_dir(self, directory: str) -> str:
        """Where tokenizers fitted on this mode's demo data live, given ``data.tokenizer_files.dir``."""
        return directory if self.mode == "fixed" else os.path.join(directory, PROCEDURAL_DIR)


# items a prepare_data tokenizer fit reads by default: 20,000 images are 60 MB decoded at 32 px and 3.9 GB at
# 256 px; the demo corpora hold fewer (2,568 images, 1,283 clips, 2,600 texts), so their fits read everything
FIT_ITEMS = 20_000


@dataclass
class TokenizerFiles:
    """Fit-once tokenizer files (``data/fitted_tokenizers.py``).

    ``dir``: where files fitted by ``prepare_data`` live, named by tokenizer config and fit data (the demo
    corpus by its generator and config, other data by the ``fit_data`` string), so other data gets its own
    fit. ``fit_data``: shards/files they are fitted on (None = the demo corpus' training shards with the
    demo, else every training source's URLs, ``::``-joined). ``fit_items``: each fit reads at most this many items
    (images, clips, texts) of ``fit_data``, in shard order, and keeps them decoded in memory (a fit of the
    k-means tokenizers samples 200,000 patches or frames of them anyway); None reads all. Part of the
    file name.
    ``files``: explicit fitted files per modality (``{image: runs/tokenizers/vqvae_image.pt}`` from
    ``mot tokenizer fit``), loaded as they are; YAML writes modality names, the keys are stored as
    ``Modality``. ``train``: optimisation of the neural tokenizers (VQ-VAE, KL-VAE) that ``prepare_data``
    fits (None: ``TrainConfig`` defaults); not part of the file name, so changing it does not refit.
    """

    dir: str = "data/tokenizers"
    fit_data: str | None = None
    fit_items: int | None = FIT_ITEMS
    files: dict[str, str] = field(default_factory=dict)
    train: TrainConfig | None = None

    def __post_init__(self) -> None:
        if self.fit_items is not None and (isinstance(self.fit_items, bool) or self.fit_items < 1):
            raise ValueError(f"data.tokenizer_files.fit_items must be >= 1 or null (read everything), "
                             f"got {self.fit_items!r}")
        try:
            self.files = {Modality.parse(m): str(path) for m, path in (self.files or {}).items()}
        except ValueError as err:
            raise ValueError(f"data.tokenizer_files.files: {err}") from err


_LOADER = ("num_workers", "train_batches_per_epoch", "val_batch_size", "shuffle_buffer", "overlong",
           "pack_open_rows", "pin_memory", "caption_dropout", "image_size")
MOVED_KEYS = {
    **{key: f"loader.{key}" for key in _LOADER},
    "demo_dir": "demo.dir",
    "demo_train_docs": "demo.train_docs",
    "demo_val_docs": "demo.val_docs",
    "tokenizer_dir": "tokenizer_files.dir",
    "tokenizer_fit_data": "tokenizer_files.fit_data",
    "tokenizer_train": "tokenizer_files.train",
}


def moved_data_keys(argv: Sequence[str]) -> str | None:
    """A message naming every old flat ``data.*`` key in ``argv`` (``--data.<key>`` flags and the ``data:``
    sections of ``--config`` files) with its new place; None when there is none."""
    found: list[str] = []
    for i, arg in enumerate(argv):
        flag, eq, inline = arg.partition("=")
        value = inline if eq else (argv[i + 1] if i + 1 < len(argv) else "")
        if flag.startswith("--data."):
            section: object = _yaml(value)
            for part in reversed(flag[len("--data."):].split(".")):  # --data.a.b v -> {a: {b: v}}
                section = {part: section}
            found += _moved(section, "command line")
        elif flag == "--config" and os.path.isfile(value):
            with open(value) as fh:
                doc = yaml.safe_load(fh)
            data = doc.get("data") if isinstance(doc, Mapping) else None
            if isinstance(data, Mapping):
                found += _moved(data, value)
    if not found:
        return None
    return ("the data module's arguments are grouped now; move these keys: " + "; ".join(found)
            + " (e.g. `--data.loader.num_workers 0`, or in YAML `data: {loader: {num_workers: 0}}`)")


def _moved(section: Mapping, where: str) -> list[str]:
    out = [f"data.{key} -> data.{MOVED_KEYS[key]} ({where})" for key in section if key in MOVED_KEYS]
    files = section.get("tokenizer_files")
    if isinstance(files, Mapping) and any(_is_modality(k) for k in files):  # the old {image: file} form
        out.append(f"data.tokenizer_files.<modality> -> data.tokenizer_files.files.<modality> ({where})")
    return out


def _is_modality(name: object) -> bool:
    return isinstance(name, str) and name.strip().upper() in Modality.__members__


def _yaml(value: str) -> object:
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def image_size_of(image_size: int | None, tok) -> int:
    """The image side the data decodes to: ``data.loader.image_size``, else the image tokenizer's
    resolution, else 32; the two must agree when both are given."""
    resolution = getattr(getattr(tok, "config", None), "resolution", None)
    if image_size is None:
        return resolution or 32
    if resolution is not None and resolution != image_size:
        raise ValueError(f"data.loader.image_size={image_size} but the image tokenizer's resolution is "
                         f"{resolution}: drop data.loader.image_size (it follows the tokenizer) or make them equal")
    return image_size


def kept_modalities(available: frozenset[Modality], modalities: Sequence[str] | None) -> frozenset[Modality]:
    """``data.modalities`` as a set (every tokenized modality when None); each needs a tokenizer."""
    if modalities is None:
        return available
    wanted = frozenset(Modality.parse(m) for m in modalities)
    missing = wanted - available
    if missing:
        names = ", ".join(m.label for m in sorted(missing))
        raise ValueError(f"modalities {sorted(m.label for m in wanted)} need a tokenizer for: {names}")
    return wanted


def required_modalities(kept: frozenset[Modality], require: Sequence[str] | None) -> frozenset[Modality]:
    """``data.require`` as a set (empty: every document is kept); each must be a kept modality."""
    try:
        wanted = frozenset(Modality.parse(m) for m in (require or []))
    except ValueError as err:
        raise ValueError(f"data.require: {err}") from None
    dropped = wanted - kept
    if dropped:
        raise ValueError(f"data.require names {sorted(m.label for m in dropped)}, which data.modalities drops "
                         f"(it keeps {sorted(m.label for m in kept)}): no document would be left")
    return wanted
