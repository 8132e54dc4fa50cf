"""Tokens/s and cumulative training FLOPs on the optimizer-step axis, plus data skip counts.

Runs of different sizes and backbones are compared on a FLOPs axis
(``train/total_flops``), so this callback adds, every batch and rank, the
training FLOPs the module reports for it (``batch_flops``: every position, plus
the latent-image ends at latent positions; ``model/accounting.py`` conventions).
It also logs the module's parameter accounting once at the start
(``params/<name>``, ``params/flops_per_token``) and the data module's
skipped-sample counters (``data/skipped_<reason>``).
"""
from __future__ import annotations

import time

import lightning.pytorch as pl


class FlopsThroughput(pl.Callback):
    def __init__(self, log_every_n_steps: int = 10) -> None:
        self.log_every_n_steps = log_every_n_steps
        self.total_flops = 0.0
        self.total_tokens = 0
        self._window_tokens = 0
        self._window_start: float | None = None

    # the running totals survive a resume
    def state_dict(self) -> dict:
        return {"total_flops": self.total_flops, "total_tokens": self.total_tokens}

    def load_state_dict(self, state_dict: dict) -> None:
        self.total_flops = state_dict["total_flops"]
        self.total_tokens = state_dict["total_tokens"]

    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        acc = pl_module.accounting(getattr(trainer.datamodule, "seq_len", 1))
        metrics = {**{f"params/{name}": n for name, n in acc.params.items()},
                   "params/flops_per_token": acc.flops_per_token}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        self._window_start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        tokens = batch.tokens.numel() * trainer.world_size
        self.total_tokens += tokens
        self.total_flops += pl_module.batch_flops(batch) * trainer.world_size
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
