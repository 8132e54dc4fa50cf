"""Validation (and test) diffusion loss by noise level (Transfusion), per validation set:
``val/<set>/loss_image_t<k>`` and, over all sets, ``val/loss_image_t<k>`` (``training/noise_bins.py`` defines the
bins; the count-weighted mean of the bins is ``val/<set>/loss_image``). Nothing for runs without diffusion.
Cost: a histogram of the positions the validation already computed."""
from __future__ import annotations

import lightning.pytorch as pl

from mot_lightning.training.noise_bins import NoiseBinLosses

ALL = "all"


class LossByNoiseLevel(pl.Callback):
    def __init__(self, n_bins: int = 5) -> None:
        """n_bins: equal-width bins of the noise level (schedule fraction) in [0, 1)."""
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        self.n_bins = n_bins
        self.metrics: dict[str, NoiseBinLosses] = {}

    def _metric(self, name: str, device) -> NoiseBinLosses:
        if name not in self.metrics:
            self.metrics[name] = NoiseBinLosses(self.n_bins).to(device)
        return self.metrics[name]

    def _update(self, pl_module, batch, dataloader_idx: int) -> None:
        out = pl_module.eval_step_losses
        if out is None or out.latent_err is None or out.noise_level is None:
            return
        names = pl_module.val_set_names
        set_name = names[dataloader_idx] if dataloader_idx < len(names) else "val"
        for name in (ALL, set_name):
            self._metric(name, out.latent_err.device).update(out.latent_err, out.noise_level, batch.latent_mask())

    def _log(self, pl_module, stage: str) -> None:
        values = {}
        for name, metric in self.metrics.items():
            losses, _ = metric.compute()  # synced over ranks: the same on every rank
            metric.reset()
            prefix = stage if name == ALL else f"{stage}/{name}"
            values.update({f"{prefix}/loss_image_t{k}": float(v) for k, v in enumerate(losses.tolist())
                           if v == v})  # an empty bin has no loss
        if values:
            pl_module.log_dict(values, sync_dist=False, add_dataloader_idx=False)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        self._update(pl_module, batch, dataloader_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._update(pl_module, batch, dataloader_idx)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        self._log(pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        self._log(pl_module, "test")
