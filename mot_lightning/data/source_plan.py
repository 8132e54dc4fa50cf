"""Which shards a data module reads: its training sources, its named validation sets, and what its
tokenizers are fitted on, whether they come from the config (``sources`` / ``val_sets``) or from the demo
corpus (``sources`` null: ``data.demo``, the demo world written as tar shards (fixed) or read as its virtual
shards (procedural))."""
from __future__ import annotations

from dataclasses import dataclass

from mot_lightning.data import demo as demo_corpus
from mot_lightning.data.fitted_tokenizers import FitPlace
from mot_lightning.data.mix import MixSchedule
from mot_lightning.data.options import DemoCorpus, TokenizerFiles
from mot_lightning.data.sources import SourceConfig


@dataclass(frozen=True)
class SourcePlan:
    sources: list[SourceConfig] | None  # None: the demo corpus
    val_sets: list[SourceConfig] | None  # None: the demo corpus' val_seen / val_heldout (with the demo)
    demo: DemoCorpus
    tokenizer_files: TokenizerFiles
    image_size: int

    @property
    def uses_demo(self) -> bool:
        return self.sources is None

    def demo_corpus(self) -> demo_corpus.DemoConfig | demo_corpus.ProceduralConfig:
        """The demo corpus of ``data.demo.mode`` (both answer prepare / train_sources / val_sets / fit_data)."""
        return self.demo.corpus(self.image_size)

    def val_set_names(self) -> list[str]:
        if self.val_sets is not None:
            return [v.name for v in self.val_sets]
        return list(demo_corpus.VAL_SETS) if self.uses_demo else []

    def train_configs(self) -> list[SourceConfig]:
        return self.demo_corpus().train_sources() if self.uses_demo else list(self.sources)

    def val_configs(self) -> list[SourceConfig]:
        if self.val_sets is not None:
            configs = list(self.val_sets)
        else:
            configs = self.demo_corpus().val_sets() if self.uses_demo else []
        names = [c.name for c in configs]
        if len(set(names)) != len(names):
            raise ValueError(f"validation set names must be unique, got {names}")
        return configs

    def split(self, split: str) -> list[SourceConfig]:
        """The sources of ``split``: ``"train"`` (the training sources) or a validation set's name."""
        if split == "train":
            return self.train_configs()
        named = {c.name: c for c in self.val_configs()}
        if split not in named:
            raise ValueError(f"split {split!r}: expected 'train' or a validation set name, one of {sorted(named)}")
        return [named[split]]

    def tokenizer_dir(self) -> str:
        """Tokenizers fitted on the procedural demo are kept apart from those fitted on the fixed corpus."""
        files = self.tokenizer_files
        return self.demo.tokenizer_dir(files.dir) if self.uses_demo and files.fit_data is None else files.dir

    def fit_place(self) -> FitPlace:
        """Where the fitted tokenizer files are: ``tokenizer_dir``, named by ``fit_key``, except those
        ``tokenizer_files.files`` names."""
        return FitPlace(self.tokenizer_dir(), self.tokenizer_files.files, self.fit_key())

    def fit_key(self) -> str | None:
        """What the tokenizers are fitted on, as their file names record it: the demo corpus by its content
        (generator and config, not its folder), else the ``fit_data`` string (None: nothing to fit on), and
        how many of its items a fit reads (``fit_items``)."""
        items = self.tokenizer_files.fit_items
        read = "" if items is None else f" (first {items} items)"
        if self.uses_demo and self.tokenizer_files.fit_data is None:
            return "demo " + self.demo_corpus().fit_identity() + read
        data = self.fit_data()
        return None if data is None else "files " + data + read

    def fit_data(self) -> str | None:
        """What missing tokenizers are fitted on: ``tokenizer_files.fit_data``, else the demo corpus, else the
        URLs of every training source (any scheme), ``::``-joined in source order: an image and a speech
        source each give their tokenizer its data."""
        if self.tokenizer_files.fit_data is not None:
            return self.tokenizer_files.fit_data
        if self.uses_demo:
            return self.demo_corpus().fit_data()
        urls = [u for source in self.sources or [] for u in ([source.urls] if isinstance(source.urls, str)
                                                             else source.urls)]
        return "::".join(urls) if urls else None


def mix_schedule(weights_schedule, configs: list[SourceConfig]) -> MixSchedule:
    """``data.loader.weights_schedule`` over the training sources (names an unknown source)."""
    return MixSchedule.build(weights_schedule, [c.name for c in configs], [c.weight for c in configs])
