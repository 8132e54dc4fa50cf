"""``MultiModalDataModule``: weighted shard sources -> packed ``MultiModalBatch`` streams.

The constructor only stores arguments and the joint vocabulary (linked to the model); ``prepare_data``
checks every source, makes the demo corpus and fits missing tokenizers once per shared filesystem; ``setup``
loads the tokenizers and builds the streams. It delegates: which shards (``source_plan.py``), stream
settings (``options.py``), loaders (``loaders.py``), raw media with their text (``media_pairs.py``), counters
summed over ranks (``counters.py``) and tokenizer fingerprints (``pretokenized.py``). docs/architecture.md
follows one batch through these.
"""

from __future__ import annotations

import lightning.pytorch as pl

from mot_lightning.data import fitted_tokenizers as fitted
from mot_lightning.data.counters import StreamCounters, any_rank, sum_over_ranks, summed_skips
from mot_lightning.data.documents import DecodeLimits
from mot_lightning.data.encode import DocumentEncoder
from mot_lightning.data.loaders import EpochLoader, EqualBatches, worker_loader
from mot_lightning.data.locks import once
from mot_lightning.data.media_pairs import MediaPairs
from mot_lightning.data.mix import BatchClock
from mot_lightning.data.options import (
    DemoCorpus,
    LoaderConfig,
    TokenizerFiles,
    image_size_of,
    kept_modalities,
    required_modalities,
)
from mot_lightning.data.pretokenized import (
    STAMP_KEY,
    PretokenizedReader,
    check_tokenizers,
    stamped_files,
    tokenizer_stamp,
)
from mot_lightning.data.source_plan import SourcePlan, mix_schedule
from mot_lightning.data.sources import SourceConfig, resolve
from mot_lightning.data.split import rank_and_world
from mot_lightning.data.stream import PackedStream, empty_batch
from mot_lightning.data.vocab import JointVocab
from mot_lightning.modality import Modality
from mot_lightning.tokenizers.base import DiscreteTokenizer, Tokenizer


class MultiModalDataModule(MediaPairs, pl.LightningDataModule):
    @classmethod
    def from_data_section(cls, data: dict) -> MultiModalDataModule:
        """The module as ``mot fit`` builds it from a YAML ``data:`` mapping (typed groups checked,
        ``class_path`` tokenizers instantiated); its tokenizers are not fitted yet."""
        from jsonargparse import ArgumentParser

        parser = ArgumentParser()
        parser.add_class_arguments(cls, "data")
        instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # its name < 4.49
        return instantiate(parser.parse_object({"data": data})).data

    def __init__(
        self,
        text_tokenizer: DiscreteTokenizer,
        image_tokenizer: Tokenizer | None = None,
        speech_tokenizer: DiscreteTokenizer | None = None,
        sources: list[SourceConfig] | None = None,
        val_sets: list[SourceConfig] | None = None,
        modalities: list[str] | None = None,
        require: list[str] | None = None,
        seq_len: int = 256,
        batch_size: int = 8,
        seed: int = 0,
        loader: LoaderConfig = LoaderConfig(),  # noqa: B008 - read only; jsonargparse shows its fields
        demo: DemoCorpus = DemoCorpus(),  # noqa: B008
        tokenizer_files: TokenizerFiles = TokenizerFiles(),  # noqa: B008
    ) -> None:
        """
        Args:
            text_tokenizer / image_tokenizer / speech_tokenizer: tokenizers (``class_path`` in YAML); a modality
                without one cannot be kept. The image one is discrete (VQ codes) or continuous
                (``LatentImageTokenizer``: Transfusion latents, for a diffusion objective).
            sources: training shard sets with sampling weights and modality filters; ``None`` = demo corpus.
            val_sets: named validation shard sets (one dataloader each, names in ``val_set_names``);
                ``None`` = the demo corpus' ``val_seen`` / ``val_heldout`` when ``sources`` is ``None``.
            modalities: global filter applied on top of every source's own, e.g. ``[text, image]`` to run
                the text+image setting on text+image+speech shards; ``None`` = every tokenized modality.
            require: keep only documents that hold a token of one of these modalities after that filter (the
                others count as ``filtered_docs``), e.g. ``[image]`` for an image-only baseline that keeps the
                captions of image documents (``configs/unimodal/``); ``None`` = every document.
            seq_len: tokens per packed row; batch_size: rows per training batch; seed: shard order,
                shuffling and caption dropout.
            loader / demo / tokenizer_files: the grouped settings of ``options.py``.
        """
        super().__init__()
        self.tokenizers: dict[Modality, Tokenizer | None] = {
            Modality.TEXT: text_tokenizer, Modality.IMAGE: image_tokenizer, Modality.SPEECH: speech_tokenizer}
        self.encoder = self._encoder()
        self.vocab: JointVocab = self.encoder.vocab
        self.sources, self.val_sets = sources, val_sets
        self.kept = kept_modalities(self.encoder.modalities, modalities)
        self.require = required_modalities(self.kept, require)
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.loader, self.demo, self.tokenizer_files = loader, demo, tokenizer_files
        self.val_batch_size = loader.val_batch_size or batch_size
        self.image_size = image_size_of(loader.image_size, image_tokenizer)
        self.train_stream: PackedStream | None = None
        self.val_streams: dict[str, PackedStream] = {}
        self._train_loader: EpochLoader | None = None
        self._stamp: dict | None = None  # tokenizer_stamp(), once the tokenizers are loaded
        self.accept_other_tokenizers = False  # `--accept_other_tokenizers true` (pretokenized.py)
        self._carried: dict[str, int] = {}  # training counts restored from a checkpoint (this rank's share)

    def _encoder(self) -> DocumentEncoder:
        t = self.tokenizers
        return DocumentEncoder(t[Modality.TEXT], t[Modality.IMAGE], t[Modality.SPEECH])

    @property
    def vocab_size(self) -> int:
        return self.vocab.size

    @property
    def latent_dim(self) -> int:
        return self.encoder.latent_dim  # width of a latent image patch, 0 for discrete images

    @property
    def modalities(self) -> list[Modality]:
        return sorted(self.kept)

    @property
    def n_modalities(self) -> int:
        return max(self.kept) + 1  # ids in use are 0..n_modalities-1 (text+speech alone still gives 3)

    @property
    def val_set_names(self) -> list[str]:
        """Names of the validation dataloaders, in ``dataloader_idx`` order."""
        return self.plan.val_set_names()

    @property
    def plan(self) -> SourcePlan:
        """Which shards are read: the configured sources or the demo corpus (``source_plan.py``)."""
        return SourcePlan(self.sources, self.val_sets, self.demo, self.tokenizer_files, self.image_size)

    def prepare_data(self) -> None:
        self.check_sources()  # before anything heavy
        if self.plan.uses_demo:
            corpus = self.plan.demo_corpus()
            with once(corpus.out, "the demo corpus"):  # once per shared filesystem
                corpus.prepare()
        files = self.tokenizer_files
        fitted.fit_missing(self.tokenizers, self.plan.fit_place(), self.plan.fit_data(), files.train, files.fit_items)

    def split_sources(self, split: str) -> list[SourceConfig]:
        """The sources of ``split``: ``"train"`` (the training sources) or a validation set's name."""
        return self.plan.split(split)

    def check_sources(self) -> None:
        """Resolve the configured sources and validation sets (names the bad key or file); cheap."""
        for cfg in [*(self.sources or []), *(self.val_sets or [])]:
            resolve(cfg, self.kept)
        if self.sources:
            mix_schedule(self.loader.weights_schedule, self.sources)

    def use_tokenizers_of(self, checkpoint: dict) -> dict[Modality, str]:
        """Take the fitted tokenizer files ``checkpoint`` was trained with (those of its stamp that exist here
        and hold the configured tokenizer class and config) for every fittable tokenizer that
        ``data.tokenizer_files.files`` leaves unnamed; call before ``prepare_data`` / ``setup``. A trained
        model then reads its own tokenizers' codes whatever data this module reads (fitted files are named
        by the data they were fitted on, so other data would otherwise get its own fit). Returns the files
        taken."""
        named = self.tokenizer_files.files
        stamped = stamped_files(checkpoint, type(self).__qualname__)
        taken = {m: f for m, f in stamped.items() if m not in named and fitted.needs_file(self.tokenizers.get(m))
                 and fitted.holds(f, self.tokenizers[m])}
        self.tokenizer_files.files = {**named, **taken}
        self._stamp = None
        return taken

    def setup(self, stage: str | None = None) -> None:
        if any(fitted.needs_file(t) for t in self.tokenizers.values()):
            self.tokenizers = fitted.load_fitted(self.tokenizers, self.plan.fit_place())
            self.encoder = self._encoder()
            self._stamp = None
        rank, world = rank_and_world(self.trainer)
        self.pretokenized = PretokenizedReader.for_encoder(self.encoder, self.image_size)
        if stage in (None, "fit"):
            configs = self.plan.train_configs()
            if not configs:
                raise ValueError("no training sources: set `sources` (or leave it null for the demo corpus)")
            self.train_stream = self._stream(configs, infinite=True, rank=rank, world=world)
        if stage in (None, "fit", "validate", "test"):
            self.val_streams = {
                cfg.name: self._stream([cfg], infinite=False, rank=rank, world=world)
                for cfg in self.plan.val_configs()
            }

    @property
    def train_source_names(self) -> list[str]:
        """The training sources in ``MultiModalBatch.source_ids`` order (after ``setup("fit")``)."""
        return [s.name for s in self.train_stream.sources] if self.train_stream is not None else []

    def _stream(self, configs: list[SourceConfig], infinite: bool, rank: int, world: int) -> PackedStream:
        resolved = [resolve(cfg, self.kept) for cfg in configs]
        batch_size = self.batch_size if infinite else self.val_batch_size
        config = self.loader.stream_config(self.seq_len, batch_size, self.image_size, self.seed, infinite,
                                           self.require)
        for source in resolved:  # a source made with other tokenizers is refused now, not in a worker later
            self.pretokenized.check_source(source)
        counters = StreamCounters(slots=self.loader.num_workers)
        stream = PackedStream(resolved, self.encoder, config, counters, rank=rank, world_size=world,
                              pretokenized=self.pretokenized)
        if infinite:
            stream.mix = mix_schedule(self.loader.weights_schedule, configs)
        return stream

    def train_dataloader(self) -> EpochLoader:
        if self.train_stream is None:
            raise RuntimeError("call setup('fit') before train_dataloader()")
        self.train_stream.counters.carry(self._carried)
        self.train_stream.clock = BatchClock.of(self.trainer, self.loader.train_batches_per_epoch)  # mix.py
        opts = self.loader
        self._train_loader = EpochLoader(worker_loader(self.train_stream, opts), opts.train_batches_per_epoch,
                                         opts.skip_warning)
        return self._train_loader

    def val_dataloader(self) -> list[EqualBatches]:
        """One loader per validation set; every rank yields as many batches as the rank with the most."""
        empty = empty_batch(self.seq_len, self.encoder)
        return [EqualBatches(worker_loader(stream, self.loader), empty, self._any_rank, name, self.loader.skip_warning)
                for name, stream in self.val_streams.items()]

    def _any_rank(self, flag: bool) -> bool:
        return any_rank(self.trainer, flag)

    def test_dataloader(self) -> list[EqualBatches]:
        return self.val_dataloader()  # `mot test` evaluates on the named validation sets

    def decode_limits(self) -> DecodeLimits:
        return self.loader.decode_limits()

    def skip_counts(self, stage: str = "train") -> dict[str, int]:
        """Skips by reason on this rank: of the training stream (``"train"``, counts from before a resume
        included on rank 0) or of the validation streams' latest pass (``"val"``, ``"test"``)."""
        streams = [self.train_stream] if stage == "train" else list(self.val_streams.values())
        return summed_skips([s.counters for s in streams if s is not None])

    def skip_metrics(self, stage: str = "train") -> dict[str, float]:
        """``data/<stage>/skipped_<reason>``: ``skip_counts(stage)`` summed over ranks (all-reduces)."""
        counts = self.skip_counts(stage)
        return {f"data/{stage}/skipped_{k}": v for k, v in zip(counts, sum_over_ranks(self.trainer, counts.values()))}

    def state_dict(self) -> dict:
        """The tokenizer stamp, and the training counters at the start of the epoch in progress summed over
        ranks (all-reduces): a resumed run regenerates that epoch, so carried plus new counts are exact."""
        loader, stamp = self._train_loader, {STAMP_KEY: self.tokenizer_stamp()}  # pretokenized.py
        if loader is None:
            return stamp
        totals = loader.epoch_start_counts
        summed = sum_over_ranks(self.trainer, totals.values())
        return {**stamp, "train_counts": {k: int(v) for k, v in zip(totals, summed)}}

    def tokenizer_stamp(self) -> dict:
        """What a checkpoint records of this module's tokenizers (fingerprints and fitted files)."""
        if self._stamp is None:
            self._stamp = tokenizer_stamp(self.encoder, fitted.fitted_files(self.tokenizers, self.plan.fit_place()))
        return self._stamp

    def load_state_dict(self, state: dict) -> None:
        """Refuse other tokenizers than the checkpoint's; carry the saved training counts (rank 0 holds them:
        logged counts are summed over ranks)."""
        check_tokenizers(state.get(STAMP_KEY), self.tokenizer_stamp(), self.accept_other_tokenizers)
        rank, _ = rank_and_world(self.trainer)
        self._carried = dict(state.get("train_counts", {})) if rank == 0 else {}
        if self.train_stream is not None:
            self.train_stream.counters.carry(self._carried)

    def stream_stats(self) -> dict[str, dict[str, int]]:
        """Every counter (skips and packing stats) per stream: ``{"train": {...}, "val_seen": {...}}``."""
        stats = {"train": self.train_stream.counters.totals()} if self.train_stream else {}
        stats.update({name: s.counters.totals() for name, s in self.val_streams.items()})
        return stats

