"""Throughput, MFU, peak memory and cumulative training FLOPs on the optimizer-step axis.

Counted: every training micro-batch of every rank adds its positions and the training FLOPs the module
reports for it (``batch_flops``: every position, plus the latent-image ends at latent positions;
``model/accounting.py`` conventions) to the running totals ``train/total_tokens`` and
``train/total_flops`` (the FLOPs axis of ``mot compare``; they survive a resume).

Timed: training work only. A batch's clock runs from ``on_train_batch_start`` to the end of its work:
its backward, or, when it ends an optimizer step, the optimizer's update (a post-step hook on the
optimizer). Validation, sample generation and checkpoint saving (other hooks) and waiting for the
data loader fall outside every such interval. On CUDA the clock is read after a synchronize.

Every ``log_every_n_steps`` optimizer steps (however many micro-batches a step accumulates), over the
steps since the last log, at the step index its ``train/loss`` carries:

- ``train/tokens_per_s``: positions of all ranks per second of training time;
- ``train/flops_per_s_per_device`` and ``train/mfu`` = that / the device's peak, as Lightning's
  ``ThroughputMonitor`` defines ``device/mfu``; the peak is ``peak_flops_per_device`` if given, else
  the accelerator's dense bf16 tensor peak from ``PEAK_TFLOPS`` (bf16 is the usual MFU denominator);
  none known (CPU, or an unlisted GPU): no MFU. The peak is logged as ``train/mfu_peak_tflops``;
- ``train/peak_memory_gb``: CUDA ``max_memory_allocated`` (1e9 bytes), the largest over ranks; not
  logged on CPU (a process's RSS is not device memory);
- ``train/total_flops``, ``train/total_tokens`` and the data module's ``data/train/skipped_<reason>``.

It also logs the module's parameter accounting once at the start (``params/<name>``,
``params/flops_per_token``).
"""
from __future__ import annotations

import time

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

# Dense bf16 tensor-core peaks (TFLOP/s, no structured sparsity) from the vendors' datasheets, matched
# in order against the lower-cased device name: the first entry whose every word occurs wins.
PEAK_TFLOPS: list[tuple[tuple[str, ...], float]] = [
    (("h200", "nvl"), 835.0),
    (("h200",), 989.4),  # SXM (and GH200)
    (("h100", "pcie"), 756.0),
    (("h100", "nvl"), 835.0),
    (("h100",), 989.4),  # SXM
    (("b200",), 2250.0),
    (("a100",), 312.0),
    (("l40s",), 362.0),
    (("l40",), 181.0),
    (("l4",), 121.0),
    (("a10g",), 125.0),
    (("a10",), 125.0),
    (("rtx", "4090"), 165.0),
    (("mi300x",), 1307.0),
]


def peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak FLOP/s of one accelerator from its name (``torch.cuda.get_device_name``), or None."""
    name = device_name.lower()
    for words, tflops in PEAK_TFLOPS:
        if all(w in name for w in words):
            return tflops * 1e12
    return None


class FlopsThroughput(pl.Callback):
    def __init__(self, log_every_n_steps: int = 10, peak_flops_per_device: float | None = None) -> None:
        """
        Args:
            log_every_n_steps: log every N optimizer steps.
            peak_flops_per_device: the accelerator's peak FLOP/s that ``train/mfu`` divides by (e.g.
                ``9.89e14`` for an H100/H200 SXM in bf16); default: looked up in ``PEAK_TFLOPS`` by the
                CUDA device name; on CPU MFU is logged only when this is given.
        """
        if log_every_n_steps < 1:
            raise ValueError(f"throughput.log_every_n_steps must be >= 1, got {log_every_n_steps}")
        if peak_flops_per_device is not None and peak_flops_per_device <= 0:
            raise ValueError(f"throughput.peak_flops_per_device must be > 0, got {peak_flops_per_device}")
        self.log_every_n_steps, self.peak_flops_per_device = log_every_n_steps, peak_flops_per_device
        self.total_flops, self.total_tokens = 0.0, 0
        self.peak: float | None = None
        self._window = {"tokens": 0, "flops": 0.0, "time": 0.0}
        self._batch_start: float | None = None
        self._work_end: float | None = None
        self._last_step = -1
        self._hooks: list = []
        self._cuda = False

    # the running totals survive a resume
    def state_dict(self) -> dict:
        return {"total_flops": self.total_flops, "total_tokens": self.total_tokens}

    def load_state_dict(self, state_dict: dict) -> None:
        self.total_flops = state_dict["total_flops"]
        self.total_tokens = state_dict["total_tokens"]

    def _resolve_peak(self, trainer: pl.Trainer) -> float | None:
        if self.peak_flops_per_device is not None:
            return float(self.peak_flops_per_device)
        device = trainer.strategy.root_device
        if device.type != "cuda":
            return None
        name = torch.cuda.get_device_name(device)
        peak = peak_flops(name)
        if peak is None:
            rank_zero_warn(f"no peak FLOP/s known for {name!r}: train/mfu is not logged. Set "
                           "throughput.peak_flops_per_device (FLOP/s of one device, dense bf16) to log it.")
        return peak

    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        self.peak = self._resolve_peak(trainer)
        acc = pl_module.accounting(getattr(trainer.datamodule, "seq_len", 1))
        metrics = {**{f"params/{name}": n for name, n in acc.params.items()},
                   "params/flops_per_token": acc.flops_per_token}
        if self.peak is not None:
            metrics["train/mfu_peak_tflops"] = self.peak / 1e12
        self._log(trainer, metrics, trainer.global_step)
        self._hooks = [opt.register_step_post_hook(self._after_optimizer_step) for opt in trainer.optimizers]
        self._window = {"tokens": 0, "flops": 0.0, "time": 0.0}
        self._last_step = trainer.global_step
        self._cuda = trainer.strategy.root_device.type == "cuda"
        if self._cuda:
            torch.cuda.reset_peak_memory_stats(trainer.strategy.root_device)

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _now(self) -> float:
        if self._cuda:
            torch.cuda.synchronize()  # the GPU's queued work belongs to the interval it was queued in
        return time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module, batch, batch_idx: int) -> None:
        self._batch_start, self._work_end = self._now(), None

    def on_after_backward(self, trainer: pl.Trainer, pl_module) -> None:
        self._work_end = self._now()

    def _after_optimizer_step(self, optimizer, args, kwargs) -> None:
        self._work_end = self._now()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        end = self._work_end if self._work_end is not None else self._now()
        if self._batch_start is not None:
            self._window["time"] += end - self._batch_start
        self._batch_start = None
        tokens = batch.tokens.numel() * trainer.world_size
        flops = pl_module.batch_flops(batch) * trainer.world_size
        self.total_tokens += tokens
        self.total_flops += flops
        self._window["tokens"] += tokens
        self._window["flops"] += flops
        step = trainer.global_step
        stepped, self._last_step = step != self._last_step, step
        if stepped and step % self.log_every_n_steps == 0:  # once per optimizer step, not per micro-batch
            self._log(trainer, self._window_metrics(trainer), step - 1)  # the step train/loss was logged at
            self._window = {"tokens": 0, "flops": 0.0, "time": 0.0}

    def _window_metrics(self, trainer: pl.Trainer) -> dict[str, float]:
        metrics = {"train/total_flops": self.total_flops, "train/total_tokens": float(self.total_tokens)}
        elapsed = self._window["time"]
        if elapsed > 0 and self._window["tokens"]:
            per_device = self._window["flops"] / trainer.world_size / elapsed
            metrics["train/tokens_per_s"] = self._window["tokens"] / elapsed
            metrics["train/flops_per_s_per_device"] = per_device
            if self.peak is not None:
                metrics["train/mfu"] = per_device / self.peak
        device = trainer.strategy.root_device
        if device.type == "cuda":  # every rank takes part in the reduction
            peak = torch.tensor(float(torch.cuda.max_memory_allocated(device)), device=device)
            metrics["train/peak_memory_gb"] = float(trainer.strategy.reduce(peak, reduce_op="max")) / 1e9
        skips = getattr(trainer.datamodule, "skip_metrics", None)
        if callable(skips):  # data/train/skipped_<reason>, summed over ranks (every rank calls this)
            metrics.update(skips("train"))
        return metrics

    @staticmethod
    def _log(trainer: pl.Trainer, metrics: dict[str, float], step: int) -> None:
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)
