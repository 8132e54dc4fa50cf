"""Throughput, MFU, peak memory and cumulative training FLOPs on the optimizer-step axis.

Counted: every training micro-batch of every rank adds its positions and the training FLOPs the module
reports for it (``batch_flops``: every position, plus the latent-image ends at latent positions;
``model/accounting.py`` conventions) to the running totals ``train/total_tokens`` and
``train/total_flops`` (the FLOPs axis of ``mot compare``; they survive a resume).

Timed: wall time between optimizer steps (CUDA synchronised at each end), less what is not training:
validation (from the step it follows to ``on_validation_end``, as Lightning's ``ThroughputMonitor``
subtracts it) and generation from callbacks (``SampleLogger``, ``GenerationMetrics``: they run it through
``callbacks/generation.py``, which pauses this clock with ``paused_clock``). Everything else counts,
because a run pays for it: waiting for the data loader (a slow loader lowers tokens/s and MFU), the
optimizer, checkpoint writing, other callbacks. The first window starts at the first batch of a fit:
starting the loader's workers and loading its first batches (Lightning fetches one batch ahead) is a
one-time cost, not throughput; from then on, each step's window holds the loading of the batch after its
own.

Every ``log_every_n_steps`` optimizer steps (however many micro-batches a step accumulates), over the
steps since the last log, at the step index its ``train/loss`` carries:

- ``train/tokens_per_s``: positions of all ranks per second of that time;
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
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

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
    # A10G: the AWS (G5) part, no NVIDIA datasheet; 70 is the dense bf16 tensor figure the A10-vs-A10G
    # spec comparisons give it (its FP32 is 31.2-35). The A10's own datasheet: 125 dense (250 sparse).
    (("a10g",), 70.0),
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
        self._mark: float | None = None  # the clock at the last optimizer step (before one: the first batch)
        self._excluded: list[list] = []  # [start, end or None while open] spans of non-training time
        self._validation: list | None = None  # the open span of a validation run
        self._last_step = -1
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
        self._window = {"tokens": 0, "flops": 0.0, "time": 0.0}
        self._last_step = trainer.global_step
        self._cuda = trainer.strategy.root_device.type == "cuda"
        if self._cuda:
            torch.cuda.reset_peak_memory_stats(trainer.strategy.root_device)
        self._excluded, self._validation, self._mark = [], None, None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module, batch, batch_idx: int) -> None:
        if self._mark is None:
            self._mark = self._now()

    def _now(self) -> float:
        if self._cuda:
            torch.cuda.synchronize()  # the GPU's queued work belongs to the interval it was queued in
        return time.perf_counter()

    # ---- time that is not training
    @contextmanager
    def paused(self) -> Iterator[None]:
        """The block's wall time is left out of tokens/s and MFU (generation from a callback)."""
        span = [self._now(), None]
        self._excluded.append(span)
        try:
            yield
        finally:
            span[1] = self._now()

    def on_validation_start(self, trainer: pl.Trainer, pl_module) -> None:
        if self._mark is not None and not trainer.sanity_checking:
            # from the step it follows: other callbacks' work before this hook belongs to the validation
            self._validation = [self._mark, None]
            self._excluded.append(self._validation)

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        if self._validation is not None:
            self._validation[1] = self._now()
            self._validation = None

    def _training_time(self, now: float) -> float:
        """Seconds since the last optimizer step less the union of the excluded spans in it; open spans go on
        into the next interval."""
        excluded, reach = 0.0, self._mark
        spans = sorted((max(s, self._mark), now if e is None else min(e, now)) for s, e in self._excluded)
        for start, end in spans:
            start = max(start, reach)  # overlapping spans count once
            if end > start:
                excluded += end - start
                reach = end
        elapsed = now - self._mark - excluded
        self._excluded = [span for span in self._excluded if span[1] is None]
        for span in self._excluded:
            span[0] = now
        self._mark = now
        return max(elapsed, 0.0)

    # ---- counting
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        tokens = batch.tokens.numel() * trainer.world_size
        flops = pl_module.batch_flops(batch) * trainer.world_size
        self.total_tokens += tokens
        self.total_flops += flops
        self._window["tokens"] += tokens
        self._window["flops"] += flops
        step = trainer.global_step
        stepped, self._last_step = step != self._last_step, step
        if not stepped:  # a micro-batch inside an accumulated optimizer step
            return
        if self._mark is not None:
            self._window["time"] += self._training_time(self._now())
        if step % self.log_every_n_steps == 0:  # once per optimizer step, not per micro-batch
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


def paused_clock(trainer: pl.Trainer | None):
    """Context manager: the block's wall time is not training time for the trainer's ``FlopsThroughput``
    (a no-op without one)."""
    callbacks = getattr(trainer, "callbacks", None) or []
    throughput = next((c for c in callbacks if isinstance(c, FlopsThroughput)), None)
    return throughput.paused() if throughput is not None else nullcontext()
