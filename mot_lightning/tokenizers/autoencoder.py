"""What the two learned image tokenizers share: a LightningModule base (optimiser, logging, PSNR),
the in-memory image DataModule, and the Trainer set-up used by ``fit``.

Subclasses implement ``forward(x) -> (recon, extras)`` and ``losses(x, recon, extras) -> dict``
(with a ``"loss"`` entry); images enter the networks in [-1, 1].
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any

import lightning as L
import torch
import torchvision
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.image import PeakSignalNoiseRatio

from mot_lightning.tokenizers.fitting import TrainConfig

log = logging.getLogger("mot_lightning.tokenizers")


class ImageAutoencoderModule(L.LightningModule):
    def __init__(self, lr: float = 2e-3, weight_decay: float = 0.0, warmup_steps: int = 50,
                 max_steps: int = 2000) -> None:
        super().__init__()
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_steps, self.max_steps = warmup_steps, max_steps
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3))

    # subclasses ------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:  # pragma: no cover
        raise NotImplementedError

    def losses(self, x: torch.Tensor, recon: torch.Tensor, extras: dict[str, Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError  # pragma: no cover

    # shared ----------------------------------------------------------------
    def _shared_step(self, batch: list[torch.Tensor], stage: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
        x = batch[0].float() / 127.5 - 1.0  # uint8 (B, 3, R, R) -> [-1, 1]
        recon, extras = self(x)
        losses = self.losses(x, recon, extras)
        self.log_dict({f"{stage}/{k}": v.detach() for k, v in losses.items()}, prog_bar=stage == "train",
                      on_step=stage == "train", on_epoch=stage != "train", sync_dist=stage != "train",
                      batch_size=x.shape[0])
        return losses["loss"], recon, extras

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _, _ = self._shared_step(batch, "train")
        return loss

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        _, recon, extras = self._shared_step(batch, "val")
        target = batch[0].float() / 255.0
        self.val_psnr(((recon + 1) / 2).clamp(0, 1), target)
        self.log("val/psnr", self.val_psnr, on_epoch=True, prog_bar=True, batch_size=target.shape[0])
        self.on_validation_batch_extras(extras)
        if batch_idx == 0:
            self._log_images(target[:8], ((recon[:8] + 1) / 2).clamp(0, 1))

    def on_validation_batch_extras(self, extras: dict[str, Any]) -> None:
        """Hook for per-batch validation statistics (codebook usage)."""

    def _log_images(self, target: torch.Tensor, recon: torch.Tensor) -> None:
        if isinstance(self.logger, TensorBoardLogger):
            grid = torchvision.utils.make_grid(torch.cat([target, recon]), nrow=len(target))
            self.logger.experiment.add_image("val/reconstructions", grid, self.global_step)

    def configure_optimizers(self) -> dict[str, Any]:
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay, betas=(0.9, 0.99))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self._lr_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _lr_factor(self, step: int) -> float:
        """Linear warm-up, then cosine decay to 10% at ``max_steps``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        t = min(1.0, (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))


class ProgressLog(L.Callback):
    """Logs step, losses and speed ~20 times per run, and the validation metrics (works without a TTY)."""

    def __init__(self, max_steps: int) -> None:
        self.every, self.max_steps, self.t0 = max(1, max_steps // 20), max_steps, time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step % self.every == 0 or step == self.max_steps:
            logs = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
            log.info("step %d/%d (%.1fs) %s", step, self.max_steps, time.perf_counter() - self.t0, _fmt(logs))

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            logs = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            log.info("validation at step %d: %s", trainer.global_step, _fmt(logs))


def _fmt(logs: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in sorted(logs.items()))


class ImageDataModule(L.LightningDataModule):
    """In-memory uint8 images (decoded once at the tokenizer's resolution)."""

    def __init__(self, train: torch.Tensor, val: torch.Tensor, batch_size: int, num_workers: int = 0) -> None:
        super().__init__()
        self.train_images, self.val_images = train, val
        self.batch_size, self.num_workers = batch_size, num_workers

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.train_images), batch_size=self.batch_size, shuffle=True,
                          drop_last=len(self.train_images) >= self.batch_size, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.val_images), batch_size=self.batch_size, num_workers=self.num_workers)


def train_autoencoder(module: ImageAutoencoderModule, train: torch.Tensor, val: torch.Tensor,
                      cfg: TrainConfig) -> L.Trainer:
    """Run Lightning fitting with TensorBoard logs under ``cfg.log_dir/cfg.run_name``."""
    if len(train) == 0:
        raise ValueError("no training images; point data.path at a folder of images or .tar shards")
    kwargs: dict[str, Any] = {
        "max_steps": cfg.max_steps, "max_epochs": -1, "accelerator": cfg.accelerator, "devices": cfg.devices,
        "precision": cfg.precision, "logger": TensorBoardLogger(cfg.log_dir, name=cfg.run_name),
        "val_check_interval": cfg.val_every_n_steps, "check_val_every_n_epoch": None,
        "limit_val_batches": 1.0 if len(val) else 0, "num_sanity_val_steps": 0, "log_every_n_steps": 10,
        "enable_progress_bar": cfg.progress_bar, "enable_checkpointing": False, "enable_model_summary": False,
        "callbacks": [ProgressLog(cfg.max_steps)],
    }
    kwargs.update(cfg.trainer_kwargs)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    trainer = L.Trainer(**kwargs)
    log.info("training %s for %d steps (logs: %s)", type(module).__name__, cfg.max_steps, trainer.logger.log_dir)
    trainer.fit(module, datamodule=ImageDataModule(train, val, cfg.batch_size, cfg.num_workers))
    return trainer
