"""``MultiModalLM``: a ``TokenLM`` (shared embedding + backbone + shared head) trained by an ``Objective``.

Thin by design: the backbone config, objective, optimizer and scheduler are injected; heavy work
(building weights, sharding, checkpointing wrappers, compilation) happens in ``configure_model``; one
``_shared_step`` serves train/val/test by calling the objective, and the steps log what it returns:
``train/loss``, ``train/loss_<modality>``, ``train/<source>/loss_<modality>`` (several training sources),
the objective's extras (``train/loss_lm``, ``train/z_loss``), ``val/loss``, ``val/loss_<modality>`` (all
validation sets together) and ``val/<set>/loss_<modality>`` per named set, each with its standard error over
documents (``..._se``), and ``train/grad_norm`` before clipping (any strategy); one step axis, the optimizer
step, whose training losses are those of all its micro-batches (``training/``).
"""
from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from mot_lightning.checkpoints.model_config import check_model_config, plain_config
from mot_lightning.data.batch import MultiModalBatch
from mot_lightning.modality import Modality
from mot_lightning.model import TransformerConfig
from mot_lightning.model.accounting import Accounting
from mot_lightning.model.lm import TokenLM
from mot_lightning.model.meta_init import build_on_meta, materialize
from mot_lightning.objectives import NextToken, Objective, StepLosses
from mot_lightning.training import EvalLosses, StepAverage, clip_gradients, log_train_losses
from mot_lightning.training.controls import TrainingControls
from mot_lightning.training.freezing import Freeze
from mot_lightning.training.warm_start import WarmStart


def default_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)


class MultiModalLM(pl.LightningModule):
    def __init__(self, backbone: TransformerConfig, vocab_size: int = 0, objective: Objective | None = None,
                 optimizer: OptimizerCallable = default_optimizer,
                 scheduler: LRSchedulerCallable | None = None, activation_checkpointing: bool = False,
                 compile: bool = False, val_set_names: list[str] | None = None, latent_dim: int = 0,
                 init_from: WarmStart | None = None, freeze: Freeze | None = None,
                 tower_lr: dict[str, float] | None = None, tower_weight_decay: dict[str, float] | None = None,
                 vocab_layout: dict[str, int] | None = None, sharded_init: bool = True) -> None:
        """
        Args:
            backbone: the ``TransformerConfig`` (dense / mot / partial untying / towers / size).
            vocab_size: joint vocabulary size; linked from ``data.vocab_size`` by the CLI.
            objective: ``NextToken`` (default) or ``Transfusion`` (continuous image latents); a class_path.
            optimizer / scheduler: injected callables (YAML ``class_path``); the scheduler steps every
                optimizer step.
            activation_checkpointing: recompute each block in backward (less memory).
            compile: ``torch.compile`` each block.
            val_set_names: names of the validation dataloaders, in order; linked from the data.
            latent_dim: width of a latent image patch; linked from ``data.latent_dim`` (0 = discrete images).
            init_from / freeze / tower_lr / tower_weight_decay: warm start from a checkpoint, frozen towers and
                shared parts, per-tower learning-rate and weight-decay multipliers (``training/controls.py``).
            vocab_layout: the joint vocabulary's block sizes, linked from the data (``training/vocab_rows.py``);
                recorded in checkpoints for warm starts into a larger vocabulary.
            sharded_init: under FSDP2 (``ModelParallelStrategy``), build on the meta device, shard, then fill
                each rank's shard with the eager build's values (``model/meta_init.py``); False: build the whole
                model on every rank first. Other strategies always build eagerly.
        """
        super().__init__()
        if vocab_size <= 0:
            raise ValueError("vocab_size must be positive: link it from the data module (`mot fit` does) "
                             "or set model.vocab_size")
        self.save_hyperparameters()
        self.cfg, self.vocab_size, self.latent_dim = backbone, vocab_size, latent_dim
        self.modalities = [Modality(m) for m in range(backbone.n_modalities)]
        self.objective = objective if objective is not None else NextToken()
        self.objective.setup(self.modalities, latent_dim)  # names a misplaced YAML key
        self.optimizer_fn, self.scheduler_fn = optimizer, scheduler
        self.activation_checkpointing, self.compile_blocks = activation_checkpointing, compile
        self.sharded_init = sharded_init
        self.val_set_names = list(val_set_names or ["val"])
        self.net: TokenLM | None = None
        self._accounting: dict[int, Accounting] = {}  # by sequence length
        self.eval_losses = EvalLosses(self.val_set_names, self.modalities)
        self.step_losses: StepLosses | None = None  # the latest training micro-batch's (NonFiniteGuard)
        self.eval_step_losses: StepLosses | None = None  # the latest validation/test batch's (diagnostics)
        self._step_average = StepAverage()  # what is logged: the whole optimizer step's losses
        self.controls = TrainingControls(backbone, vocab_size, init_from, freeze, tower_lr, tower_weight_decay,
                                         vocab_layout)

    def configure_model(self) -> None:
        if self.net is not None:
            return
        mesh = getattr(self, "device_mesh", None)  # ModelParallelStrategy (FSDP2)
        on_meta = mesh is not None and self.sharded_init  # weights come after sharding, per rank
        if on_meta:
            self.net = build_on_meta(self.cfg, self.vocab_size, latent_dim=self.latent_dim)
        else:
            self.net = TokenLM(self.cfg, self.vocab_size, latent_dim=self.latent_dim)
        self.controls.prepare(self, self.net, self._trainer, load=not on_meta)  # before any wrapper
        layers = self.net.backbone.layers
        if self.activation_checkpointing:
            from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

            for i, block in enumerate(layers):
                layers[i] = checkpoint_wrapper(block)
        if self.compile_blocks:
            self.net.backbone.compile_blocks()  # tower sizes symbolic: one graph for every batch
        if mesh is not None:
            from torch.distributed.fsdp import fully_shard

            for block in layers:
                fully_shard(block, mesh=mesh["data_parallel"])
            fully_shard(self.net, mesh=mesh["data_parallel"])
        if on_meta:
            materialize(self.net, self._trainer.strategy.root_device if self._trainer else torch.device("cpu"))
            self.controls.load(self.net, self._trainer)  # warm start into the shards

    def _shared_step(self, batch: MultiModalBatch, stage: str, seed: int) -> StepLosses:
        return self.objective.loss(self.net, batch, stage=stage, seed=seed)

    def _train_seed(self, batch_idx: int) -> int:
        """Seed of what the objective draws for one training batch (noise, times): the run's seed, optimizer
        step, batch index and rank, so a resumed run draws what the unbroken run drew and ranks differ."""
        trainer = self._trainer
        step, rank = (trainer.global_step, trainer.global_rank) if trainer is not None else (0, 0)
        return ((torch.initial_seed() % 2**31) * 1_000_003 + step * 10_007 + batch_idx) * 101 + rank

    def training_step(self, batch: MultiModalBatch, batch_idx: int) -> Tensor:
        out = self.step_losses = self._shared_step(batch, "train", self._train_seed(batch_idx))
        step = self._step_average.add(self.trainer.global_step, out, batch)  # the step's micro-batches so far
        log_train_losses(self, step, batch.batch_size, self._step_average.by_source)  # also per source
        return out.total + self.net.backbone.aux_loss()  # MoE load balancing (0 without token-choice MoE)

    def validation_step(self, batch: MultiModalBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        out = self.eval_step_losses = self._shared_step(batch, "val", seed=dataloader_idx * 100_003 + batch_idx)
        set_name = self.val_set_names[dataloader_idx] if dataloader_idx < len(self.val_set_names) else "val"
        self.eval_losses.update(set_name, out.doc_sums, out.doc_weights)

    def test_step(self, batch: MultiModalBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.validation_step(batch, batch_idx, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    def _log_eval(self, stage: str) -> None:
        values = self.eval_losses.compute(stage, self.objective.eval_groups())  # synced: same on every rank
        skips = getattr(self.trainer.datamodule, "skip_metrics", None)
        if callable(skips):  # data/<stage>/skipped_<reason> of this pass, summed over ranks
            values.update(skips(stage))
        self.log_dict(values, prog_bar=False, sync_dist=False, add_dataloader_idx=False)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Hyperparameters as plain values, so weights-only loading reads every checkpoint (``checkpoints/``)."""
        if "hyper_parameters" in checkpoint:
            checkpoint["hyper_parameters"] = plain_config(checkpoint["hyper_parameters"])

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a checkpoint trained with another model config (``checkpoints/model_config.py``) or whose
        shapes disagree with this config, naming what differs."""
        check_model_config(checkpoint.get("hyper_parameters"), self.hparams)
        own = self.state_dict()
        mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs config {tuple(own[k].shape)}"
                      for k, v in checkpoint.get("state_dict", {}).items()
                      if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
        if not mismatched:
            return
        hint = ""
        if any(k.startswith(("net.embed.", "net.head.")) for k in (m.split(":")[0] for m in mismatched)):
            hint = (" The vocabulary differs: the data's tokenizers (vocab_size "
                    f"{self.vocab_size}) are not the ones this checkpoint was trained with.")
        raise ValueError("checkpoint does not fit this model config." + hint + " Mismatched tensors:\n  "
                         + "\n  ".join(mismatched[:10]))

    def configure_optimizers(self) -> Any:
        """Groups ``decay`` / ``no_decay`` (per tower with tower multipliers; ``training/param_groups.py``)."""
        optimizer = self.optimizer_fn(self.controls.param_groups(self, self.net))
        self.controls.scale(optimizer)  # per-group lr / weight decay, before the scheduler reads them
        if self.scheduler_fn is None:
            return optimizer
        scheduler = self.scheduler_fn(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        self.controls.on_train_start(self)  # params/trainable, params/frozen

    def on_train_batch_start(self, batch: MultiModalBatch, batch_idx: int) -> None:
        self.controls.on_train_batch_start(self)  # model.freeze.until_step

    def on_before_optimizer_step(self, optimizer) -> None:
        self.controls.on_before_optimizer_step(self)  # frozen vocabulary rows; late-unfrozen grads under DDP

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clip under DDP, FSDP1 and FSDP2 alike and log the total norm before clipping."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for callback in self.trainer.callbacks:  # diagnostics that read the gradients exactly as clipped here
            if hasattr(callback, "before_clipping"):
                callback.before_clipping(self.trainer, self, params)
        norm = clip_gradients(self.trainer.strategy.model, params, gradient_clip_val, gradient_clip_algorithm)
        self.log("train/grad_norm", norm, batch_size=1)

    def accounting(self, seq_len: int) -> Accounting:
        """Parameters and training FLOPs per token of all this module trains (after ``configure_model``)."""
        if seq_len not in self._accounting:  # computed once: the throughput callback asks every batch
            self._accounting[seq_len] = self.net.accounting(seq_len)
        return self._accounting[seq_len]

    def batch_flops(self, batch: MultiModalBatch) -> float:
        """Training FLOPs of one batch on one rank: every position, plus the latent ends at latent ones."""
        n_latent = int(batch.latent_mask().sum()) if batch.has_latents else 0
        return self.accounting(batch.seq_len).batch_flops(batch.tokens.numel(), n_latent)

