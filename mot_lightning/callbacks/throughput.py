"""Tokens/s and cumulative training FLOPs on the optimizer-step axis, plus data skip counts.

Runs of different sizes and backbones are compared on a FLOPs axis
(``train/total_flops``), so this callback counts every position processed on
every rank times the model's training FLOPs per token (``model/accounting.py``
conventions), plus, with continuous images (Transfusion), 6 FLOPs per parameter
of the latent projections and timestep MLP at each latent position. It also
logs the parameter accounting once at the start and the data module's
skipped-sample counters (``data/skipped_<reason>``).
"""
from __future__ import annotations

import time

import lightning.pytorch as pl

from mot_lightning.model import backbone_stats


class FlopsThroughput(pl.Callback):
    def __init__(self, log_every_n_steps: int = 10) -> None:
        self.log_every_n_steps = log_every_n_steps
        self.total_flops = 0.0
        self.total_tokens = 0
        self._window_tokens = 0
        self._window_start: float | None = None
        self._flops_per_token: dict[int, float] = {}  # by sequence length: computed once

    # the running totals survive a resume
    def state_dict(self) -> dict:
        return {"total_flops": self.total_flops, "total_tokens": self.total_tokens}

    def load_state_dict(self, state_dict: dict) -> None:
        self.total_flops = state_dict["total_flops"]
        self.total_tokens = state_dict["total_tokens"]

    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        cfg = pl_module.cfg
        stats = backbone_stats(cfg, getattr(trainer.datamodule, "seq_len", 1), vocab_size=pl_module.vocab_size)
        embed = pl_module.vocab_size * cfg.dim * 2  # shared input embedding + output head
        latent = pl_module.latent_params() if hasattr(pl_module, "latent_params") else 0  # Transfusion ends
        for logger in trainer.loggers:
            logger.log_metrics({
                "params/backbone_total": stats.total_params,
                "params/total_with_embeddings": stats.total_params + embed + latent,
                "params/active_per_token": next(iter(stats.active_params.values())) + embed,
                "params/flops_per_token": stats.mean_flops_per_token,
            }, step=trainer.global_step)
        self._window_start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        tokens = batch.tokens.numel() * trainer.world_size
        self.total_tokens += tokens
        if batch.seq_len not in self._flops_per_token:
            self._flops_per_token[batch.seq_len] = pl_module.flops_per_token(batch.seq_len)
        self.total_flops += tokens * self._flops_per_token[batch.seq_len]
        if hasattr(pl_module, "latent_flops"):  # latent projections + timestep MLP at image positions
            self.total_flops += pl_module.latent_flops(batch) * trainer.world_size
        self._window_tokens += tokens
        step = trainer.global_step
        if step % self.log_every_n_steps or self._window_start is None:
            return
        elapsed = time.perf_counter() - self._window_start
        metrics = {"train/total_flops": self.total_flops, "train/total_tokens": float(self.total_tokens)}
        if elapsed > 0 and self._window_tokens:
            metrics["train/tokens_per_s"] = self._window_tokens / elapsed
        skips = getattr(trainer.datamodule, "skip_counts", None)
        if callable(skips):
            metrics.update({f"data/skipped_{k}": float(v) for k, v in skips().items()})
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, rank_zero_only=True)
        self._window_tokens, self._window_start = 0, time.perf_counter()
