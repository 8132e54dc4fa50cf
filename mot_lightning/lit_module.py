"""``MultiModalLM``: shared token embedding + backbone + shared output head + next-token objective.

Thin by design (CONVENTIONS.md): the backbone config, optimizer and scheduler
are injected; heavy work (building weights, sharding, checkpointing wrappers,
compilation) happens in ``configure_model``; one ``_shared_step`` serves
train/val/test. Embeddings and the head stay shared across modalities, as in
the paper; everything inside the backbone is untied per its config.

Logged (DESIGN.md metric contract; one step axis, the optimizer step):
``train/loss``, ``train/loss_<modality>``, ``val/loss``, ``val/loss_<modality>``
(all validation sets together) and ``val/<set>/loss_<modality>`` per named set.

Transfusion setting (``diffusion`` set, continuous image latents from the data):
text (and speech) keep the next-token loss; every image gets one diffusion time,
its latent patches are noised, and the latent head predicts the noise (or flow
velocity) of each patch, attending bidirectionally inside the image. The loss is
``L_LM + lam * L_diffusion`` and ``train/loss_image`` / ``val/loss_image`` are the
diffusion loss (MSE per latent element). Validation draws noise and times from
``diffusion.val_seed`` and the batch index, identical in every run.
"""
from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanMetric

from mot_lightning.data.batch import MultiModalBatch
from mot_lightning.modality import Modality
from mot_lightning.model import TransformerConfig, backbone_stats
from mot_lightning.model.lm import TokenLM
from mot_lightning.model.untied import UntiedRMSNorm
from mot_lightning.objectives import (
    DiffusionConfig,
    ModalityLosses,
    diffusion_loss,
    fixed_noise,
    next_token_losses,
)


def default_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)


class MultiModalLM(pl.LightningModule):
    def __init__(
        self,
        backbone: TransformerConfig,
        vocab_size: int = 0,
        loss_weights: dict[str, float] | None = None,
        z_loss: float = 0.0,
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
        activation_checkpointing: bool = False,
        compile: bool = False,
        val_set_names: list[str] | None = None,
        diffusion: DiffusionConfig | None = None,
        latent_dim: int = 0,
    ) -> None:
        """
        Args:
            backbone: the ``TransformerConfig`` (dense / mot / partial untying / towers / size).
            vocab_size: joint vocabulary size; linked from ``data.vocab_size`` by the CLI.
            loss_weights: weight of each modality's target tokens in the training loss, e.g.
                ``{text: 1.0, image: 1.0}``; missing modalities weigh 1.
            z_loss: coefficient of the squared log-normaliser (Chameleon: 1e-5; 0 = off).
            optimizer / scheduler: injected callables (YAML ``class_path``); the scheduler steps every
                optimizer step.
            activation_checkpointing: recompute each block in backward (less memory).
            compile: ``torch.compile`` each block.
            val_set_names: names of the validation dataloaders, in order; linked from the data.
            diffusion: the image diffusion objective (Transfusion setting); needs continuous image latents.
            latent_dim: width of a latent image patch; linked from ``data.latent_dim`` (0 = discrete images).
        """
        super().__init__()
        if vocab_size <= 0:
            raise ValueError("vocab_size must be positive: link it from the data module (`mot fit` does) "
                             "or set model.vocab_size")
        self.save_hyperparameters()
        self.cfg, self.vocab_size, self.z_loss = backbone, vocab_size, z_loss
        self.modalities = [Modality(m) for m in range(backbone.n_modalities)]
        weights = {Modality.parse(k): float(v) for k, v in (loss_weights or {}).items()}
        unknown = [m for m in weights if m not in self.modalities]
        if unknown:
            raise ValueError(f"loss_weights name modalities the model does not have: {[m.label for m in unknown]}; "
                             f"it has {[m.label for m in self.modalities]}")
        if latent_dim > 0 and diffusion is None:
            raise ValueError(f"the data's image tokenizer gives continuous latents (latent_dim {latent_dim}): set "
                             "model.diffusion (see configs/transfusion/mot.yaml) or use a discrete image tokenizer")
        if diffusion is not None and latent_dim <= 0:
            raise ValueError("model.diffusion trains images as continuous latents, but the data's image tokenizer is "
                             "discrete or missing: set data.image_tokenizer to "
                             "mot_lightning.tokenizers.LatentImageTokenizer (configs/transfusion/*.yaml)")
        self.diffusion, self.latent_dim = diffusion, latent_dim
        self.objective = diffusion.build() if diffusion is not None else None
        self.register_buffer("loss_weights", torch.tensor([weights.get(m, 1.0) for m in self.modalities]),
                             persistent=False)
        self.optimizer_fn, self.scheduler_fn = optimizer, scheduler
        self.activation_checkpointing, self.compile_blocks = activation_checkpointing, compile
        self.val_set_names = list(val_set_names or ["val"])
        self.net: TokenLM | None = None
        self._latent_params: int | None = None
        self.val_metrics = nn.ModuleDict({
            self._metric_key(s, m): MeanMetric() for s in ["all", *self.val_set_names] for m in self.modalities
        })
        self.val_total = MeanMetric()

    @staticmethod
    def _metric_key(set_name: str, m: Modality) -> str:
        return f"{set_name}__{m.label}".replace(".", "_")

    # ---------------------------------------------------------------- model
    def configure_model(self) -> None:
        if self.net is not None:
            return
        self.net = TokenLM(self.cfg, self.vocab_size, latent_dim=self.latent_dim)
        layers = self.net.backbone.layers
        if self.activation_checkpointing:
            from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

            for i, block in enumerate(layers):
                layers[i] = checkpoint_wrapper(block)
        if self.compile_blocks:
            for block in layers:
                block.compile()
        if getattr(self, "device_mesh", None) is not None:  # ModelParallelStrategy (FSDP2)
            from torch.distributed.fsdp import fully_shard

            mesh = self.device_mesh["data_parallel"]
            for block in layers:
                fully_shard(block, mesh=mesh)
            fully_shard(self.net, mesh=mesh)

    def forward(self, batch: MultiModalBatch) -> Tensor:
        """-> logits float[B, T, vocab_size] (discrete images; see ``_shared_step`` for latents)."""
        return self.net(batch.tokens, batch.modality, positions=batch.positions, doc_ids=batch.doc_ids)

    # ---------------------------------------------------------------- steps
    def _shared_step(self, batch: MultiModalBatch, val_index: int | None = None,
                     train_seed: int = 0) -> tuple[ModalityLosses, Tensor | None, int]:
        """-> (next-token losses, diffusion loss or None, latent positions).

        ``val_index`` (validation) fixes the diffusion noise and times; ``None`` (training) draws them from
        ``train_seed``.
        """
        if self.objective is None:
            if batch.has_latents:
                raise ValueError("the batch carries image latents but the model has no diffusion objective")
            logits = self(batch)
            return self._lm_losses(logits, batch), None, 0
        if not batch.has_latents:
            raise ValueError("the diffusion model needs batches with image latents (a LatentImageTokenizer)")
        mask = batch.latent_mask()  # (B, T)
        x0 = batch.latents
        t, noise = self._diffusion_inputs(batch, val_index, train_seed)  # t: per position (B, T)
        B, T, D = x0.shape
        flat = (x0.reshape(B * T, D), noise.reshape(B * T, D), t.reshape(-1))  # per-position rows for the objective
        x_t = self.objective.corrupt(*flat).view(B, T, D)
        logits, pred = self.net(batch.tokens, batch.modality, positions=batch.positions, doc_ids=batch.doc_ids,
                                span_ids=batch.span_ids, latents=x_t, timesteps=self.diffusion.time_input(t))
        target = self.objective.target(*flat).view(B, T, D)
        n_latent = int(mask.sum())
        return self._lm_losses(logits, batch), diffusion_loss(pred, target, mask), n_latent

    def _lm_losses(self, logits: Tensor, batch: MultiModalBatch) -> ModalityLosses:
        return next_token_losses(logits, batch.targets, batch.target_modality(), self.loss_weights, self.z_loss)

    def _diffusion_inputs(self, batch: MultiModalBatch, val_index: int | None,
                          train_seed: int) -> tuple[Tensor, Tensor]:
        """One diffusion time per image (span), broadcast to its positions: (t long/float[B, T], noise [B, T, D])."""
        B = batch.batch_size
        n_spans = max(int(batch.span_ids.max()) + 1, 1)
        device = batch.latents.device
        if val_index is None:  # seeded by (step, batch, rank): a resumed run redraws exactly what it would have
            g = torch.Generator(device=device).manual_seed(train_seed)
            t_table = self.diffusion.sample_t(B * n_spans, generator=g, device=device).view(B, n_spans)
            noise = torch.randn(batch.latents.shape, generator=g, device=device, dtype=batch.latents.dtype)
        else:  # the same times and noise for this validation batch in every run
            seed = self.diffusion.val_seed * 1_000_003 + val_index
            t_table = self.objective.fixed_t(B * n_spans, device=device)
            perm = torch.randperm(B * n_spans, generator=torch.Generator().manual_seed(seed)).to(device)
            t_table = t_table[perm].view(B, n_spans)  # times spread evenly, not sorted by position
            noise = fixed_noise(batch.latents.shape, seed, device=device, dtype=batch.latents.dtype)
        t = t_table.gather(1, batch.span_ids.clamp_min(0))  # (B, T); non-latent positions are never used
        return t, noise

    @staticmethod
    def _modality_losses(out: ModalityLosses, diff: Tensor | None, n_latent: int) -> tuple[Tensor, Tensor]:
        """(loss float[M], weight float[M]) per modality: mean next-token CE over its target tokens, except that
        diffusion images report the diffusion loss over their latent positions."""
        values, counts = out.ce_sum / out.count.clamp_min(1), out.count.clone()
        if diff is not None:
            values = values.clone()
            values[Modality.IMAGE], counts[Modality.IMAGE] = diff, float(n_latent)
        return values, counts

    def _train_noise_seed(self, batch_idx: int) -> int:
        """Seed of one training batch's diffusion times and noise: the run's seed, optimizer step, batch index
        and rank (so a resumed run draws what the unbroken run drew, and ranks draw differently)."""
        trainer = self._trainer
        step, rank = (trainer.global_step, trainer.global_rank) if trainer is not None else (0, 0)
        return ((torch.initial_seed() % 2**31) * 1_000_003 + step * 10_007 + batch_idx) * 101 + rank

    def training_step(self, batch: MultiModalBatch, batch_idx: int) -> Tensor:
        out, diff, n_latent = self._shared_step(batch, train_seed=self._train_noise_seed(batch_idx))
        total = out.loss if diff is None else out.loss + self.diffusion.lam * diff
        loss = total + self.net.backbone.aux_loss()  # MoE load balancing (0 without token-choice MoE)
        values, counts = self._modality_losses(out, diff, n_latent)
        self.log("train/loss", total, prog_bar=True, batch_size=batch.batch_size)
        for m, value, n in zip(self.modalities, values, counts.tolist()):
            if n > 0:  # a batch without this modality has no loss for it
                self.log(f"train/loss_{m.label}", value, prog_bar=True, batch_size=int(n))
        if diff is not None:
            self.log("train/loss_lm", out.loss, batch_size=batch.batch_size)
        if self.z_loss:
            self.log("train/z_loss", out.z_loss, batch_size=batch.batch_size)
        self._log_moe(batch.batch_size)
        return loss

    def _log_moe(self, batch_size: int) -> None:
        """Expert load and dropped tokens, averaged over MoE layers (nothing without MoE)."""
        stats = list(self.net.backbone.moe_stats().values())
        if not stats:
            return
        n = len(stats)
        self.log_dict({
            "train/moe_max_expert_load": sum(float(s.load.max()) for s in stats) / n,
            "train/moe_dropped_fraction": sum(float(s.dropped) for s in stats) / n,
            "train/moe_aux_loss": sum(float(s.aux_loss) for s in stats) / n,
        }, batch_size=batch_size)

    def validation_step(self, batch: MultiModalBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        out, diff, n_latent = self._shared_step(batch, val_index=dataloader_idx * 100_003 + batch_idx)
        set_name = self.val_set_names[dataloader_idx] if dataloader_idx < len(self.val_set_names) else "val"
        values, counts = self._modality_losses(out, diff, n_latent)
        for m, value, weight in zip(self.modalities, values, counts):
            for key in (self._metric_key("all", m), self._metric_key(set_name, m)):
                self.val_metrics[key].update(value, weight=weight)
        lm = out.ce_sum.sum() / out.count.sum().clamp_min(1)
        if diff is None:
            self.val_total.update(lm, weight=out.count.sum())
        else:  # same form as train/loss: L_LM + lam * L_diffusion
            self.val_total.update(lm + self.diffusion.lam * diff, weight=out.count.sum() + n_latent)

    def test_step(self, batch: MultiModalBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.validation_step(batch, batch_idx, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    def _log_eval(self, stage: str) -> None:
        values = {}
        for set_name in ["all", *self.val_set_names]:
            prefix = stage if set_name == "all" else f"{stage}/{set_name}"
            for m in self.modalities:
                metric = self.val_metrics[self._metric_key(set_name, m)]
                value = metric.compute()
                if torch.isfinite(value):  # every rank computes the same synced value
                    values[f"{prefix}/loss_{m.label}"] = value
                metric.reset()
        values[f"{stage}/loss"] = self.val_total.compute()
        self.val_total.reset()
        self.log_dict(values, prog_bar=False, sync_dist=False, add_dataloader_idx=False)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a checkpoint whose shapes disagree with this config, naming what differs."""
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

    # ---------------------------------------------------------------- optim
    def configure_optimizers(self) -> Any:
        decay, no_decay = [], []
        no_decay_ids = {id(p) for mod in self.modules() if isinstance(mod, (UntiedRMSNorm, nn.Embedding))
                        for p in mod.parameters(recurse=False)}
        for p in self.parameters():
            if p.requires_grad:
                (no_decay if id(p) in no_decay_ids else decay).append(p)
        optimizer = self.optimizer_fn([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])
        if self.scheduler_fn is None:
            return optimizer
        scheduler = self.scheduler_fn(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---------------------------------------------------------------- accounting
    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token of backbone + head (mean over modalities)."""
        return backbone_stats(self.cfg, seq_len, vocab_size=self.vocab_size).mean_flops_per_token

    def latent_params(self) -> int:
        """Parameters of the latent-image ends (input projection, timestep MLP, latent head); 0 without."""
        if self.net is None or self.net.latent_dim == 0:
            return 0
        if self._latent_params is None:  # counted once: the callback asks every batch
            self._latent_params = sum(p.numel() for name in ("latent_in", "time_embed", "latent_out")
                                      for p in getattr(self.net, name).parameters())
        return self._latent_params

    def latent_flops(self, batch: MultiModalBatch) -> float:
        """Training FLOPs of the latent-image ends for one batch: 6 per parameter per latent position."""
        if not batch.has_latents:
            return 0.0
        return 6.0 * self.latent_params() * float(batch.latent_mask().sum())
