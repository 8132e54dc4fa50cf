"""The research controls of one ``MultiModalLM``, behind the few hooks it calls.

``model.init_from`` (``warm_start.py``), ``model.freeze`` (``freezing.py``), ``model.tower_lr`` /
``model.tower_weight_decay`` (``param_groups.py``), and the ``params/trainable`` / ``params/frozen`` tags.
Freezing acts in ``configure_model`` on the bare model, before activation checkpointing, compilation or
sharding wrap it; so does the warm start, except on FSDP2's meta-device path, where it writes each rank's
shard of the full tensors once the shards hold weights (``model/meta_init.py``).
"""
from __future__ import annotations

from collections.abc import Mapping

import lightning.pytorch as pl
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

from mot_lightning.model.config import TransformerConfig
from mot_lightning.model.lm import TokenLM
from mot_lightning.model.towers import clean_name, parameter_places
from mot_lightning.training.freezing import Freeze, Freezer, param_counts
from mot_lightning.training.param_groups import (
    apply_scales,
    no_decay_names,
    parameter_groups,
    parse_multipliers,
)
from mot_lightning.training.vocab_rows import check_layout
from mot_lightning.training.warm_start import WarmStart, warm_start

NET = "net."  # where the LightningModule holds its TokenLM


class TrainingControls:
    def __init__(self, cfg: TransformerConfig, vocab_size: int, init_from: WarmStart | None = None,
                 freeze: Freeze | None = None, tower_lr: Mapping[str, float] | None = None,
                 tower_weight_decay: Mapping[str, float] | None = None,
                 vocab_layout: Mapping[str, int] | None = None) -> None:
        check_layout(vocab_layout, vocab_size)
        parse_multipliers(tower_lr, cfg.n_modalities, "model.tower_lr")  # named errors before anything is built
        parse_multipliers(tower_weight_decay, cfg.n_modalities, "model.tower_weight_decay")
        self.cfg, self.init_from, self.freeze = cfg, init_from, freeze
        self.tower_lr, self.tower_weight_decay = tower_lr, tower_weight_decay
        self.vocab_layout = dict(vocab_layout) if vocab_layout is not None else None
        self.freezer: Freezer | None = None

    def prepare(self, module: nn.Module, net: TokenLM, trainer: pl.Trainer | None, load: bool = True) -> None:
        """``configure_model``, right after ``net`` is built: warm start (``load``: the weights exist, not on the
        meta device), then freezing (names only: meta weights too)."""
        if load:
            self.load(net, trainer)
        if self.freeze is not None:
            self.freezer = Freezer(self.freeze, net, self.vocab_layout, prefix=NET)
            self.freezer.apply(module, step=0)
            if trainer is not None:
                self.freezer.check_strategy(trainer.strategy)

    def load(self, net: TokenLM, trainer: pl.Trainer | None) -> None:
        """The warm start, when fitting: into the bare model, or into its shards once they hold weights."""
        if self.init_from is not None and trainer is not None and trainer.state.fn == TrainerFn.FITTING:
            warm_start(net, self.init_from, self.vocab_layout)

    def param_groups(self, module: nn.Module, net: TokenLM) -> list[dict]:
        """The optimizer's parameter groups (every parameter, frozen ones too); ``scale`` them once built."""
        named = [(clean_name(n), p) for n, p in module.named_parameters()]
        places = {NET + n: place for n, place in parameter_places(net).items()}
        extra = self.freezer.no_decay if self.freezer is not None else set()
        return parameter_groups(named, places, no_decay_names(module, extra), self.cfg, self.tower_lr,
                                self.tower_weight_decay)

    @staticmethod
    def scale(optimizer) -> None:
        apply_scales(optimizer)

    def on_train_start(self, module: pl.LightningModule) -> None:
        if self.freezer is not None:
            self.freezer.apply(module, module.trainer.global_step)  # a resumed run past until_step
        self._log_counts(module)

    def on_train_batch_start(self, module: pl.LightningModule) -> None:
        if self.freezer is not None and self.freezer.apply(module, module.trainer.global_step):
            self._log_counts(module)  # until_step reached

    def on_before_optimizer_step(self, module: pl.LightningModule) -> None:
        if self.freezer is not None:
            trainer = module.trainer
            self.freezer.before_optimizer_step(module, trainer.strategy, trainer.global_step)

    def _log_counts(self, module: pl.LightningModule) -> None:
        step = module.trainer.global_step
        counts = self.freezer.counts(module, step) if self.freezer is not None else param_counts(module)
        for logger in module.loggers:
            logger.log_metrics(counts, step=step)
