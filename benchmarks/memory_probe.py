"""A Lightning callback for the benchmarks: per-rank wall times and peak resident memory of a `mot fit` run.

    mot fit ... --trainer.callbacks+=benchmarks.memory_probe.MemoryProbe --trainer.callbacks.out DIR

(run from the repository root so ``benchmarks`` imports). Linux only: the peak is ``VmHWM`` of
``/proc/self/status``, reset (``/proc/self/clear_refs``) at each phase start, so each phase's peak is its own:

- ``rss_before_build``: resident memory when ``setup`` runs, right before ``configure_model`` builds the model
  (imports, the data module and its tokenizers: the same for every way of building);
- ``startup_peak``: the peak from there to the start of fitting (build, sharding, materialisation, strategy
  set-up); ``startup_s`` its wall time;
- ``train_peak``: the peak over the training steps (gradients, optimizer state, activations), ``step_s`` each
  step's wall time; ``save_s`` the checkpoint writes.

Each rank writes ``DIR/rank<r>.json`` when fitting ends.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import lightning.pytorch as pl
from torch.distributed.tensor import DTensor

GB = 1e9


def _status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1]) * 1024  # kB -> bytes
    raise KeyError(key)


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


class MemoryProbe(pl.Callback):
    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.record: dict = {"step_s": [], "save_s": []}
        self._t = 0.0

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.record["rss_before_build"] = _status("VmRSS")
        _reset_peak()
        self._t = time.perf_counter()

    def on_fit_start(self, trainer, pl_module) -> None:
        r = self.record
        r["startup_s"] = time.perf_counter() - self._t
        r["startup_peak"] = _status("VmHWM")
        r["rss_after_startup"] = _status("VmRSS")
        params = list(pl_module.parameters())
        r["parameters"] = sum(p.numel() for p in params)  # full shapes (a DTensor's global shape)
        r["local_parameters"] = sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in params)
        r["on_meta"] = any(p.is_meta for p in params)
        r["vocab_size"], r["world_size"] = pl_module.vocab_size, trainer.world_size
        _reset_peak()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.record["step_s"].append(time.perf_counter() - self._t)
        self.record.setdefault("losses", []).append(float(outputs["loss"]))
        self.record["train_peak"] = _status("VmHWM")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.record.setdefault("global_step_saved", []).append(trainer.global_step)

    def on_fit_end(self, trainer, pl_module) -> None:
        self.record["end_peak"] = _status("VmHWM")  # includes checkpoint writes after the last step
        self.record["global_step"] = trainer.global_step
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.record, indent=1))
