"""Helpers of ``benchmarks/gpu_check.sh``: a probe callback every run carries, and the one summary table.

``StepProbe`` (added to a ``mot fit`` run as ``--trainer.callbacks+=...``) times every optimizer step
end to end (batch end to batch end: data wait, forward, backward, optimizer; CUDA synchronised), and
writes ``<out_file>`` as JSON at the end of training: median step time over the steps after
``skip_steps`` (compilation and warm-up), tokens per step, peak device memory, the first and last
``train/loss``, and the model's training FLOPs per token (``MultiModalLM.accounting``, the
``model/accounting.py`` conventions).

``python benchmarks/gpu_check.py summarize OUT`` reads every ``OUT/runs/*.json``, the backbone
benchmark's ``OUT/backbone.json`` and ``OUT/gpu_tests.log`` and prints one table (also written to
``OUT/gpu_check.md``). MFU = tokens/s x FLOPs per token / the device's dense bf16 peak, computed here
from the throughput callback's table (``mot_lightning/callbacks/throughput.py``; override with
``PEAK_TFLOPS``); the callback's own ``train/mfu`` is not read.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from mot_lightning.callbacks.throughput import peak_flops as table_peak_flops


def peak_flops(device_name: str) -> float | None:
    """FLOP/s of ``device_name``'s dense bf16 peak, or None when unknown (``PEAK_TFLOPS`` overrides)."""
    if os.environ.get("PEAK_TFLOPS"):
        return float(os.environ["PEAK_TFLOPS"]) * 1e12
    return table_peak_flops(device_name) if device_name else None


class StepProbe(pl.Callback):
    def __init__(self, out_file: str, skip_steps: int = 5) -> None:
        self.out_file, self.skip_steps = Path(out_file), skip_steps
        self.step_times: list[float] = []
        self.losses: list[float] = []
        self.tokens_per_step = 0
        self._last: float | None = None

    def _now(self, trainer: pl.Trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self._last = self._now(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now = self._now(trainer)
        self.step_times.append(now - self._last)
        self._last = now
        self.tokens_per_step = batch.tokens.numel() * trainer.world_size
        loss = trainer.callback_metrics.get("train/loss")
        self.losses.append(float(loss) if loss is not None else float("nan"))

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.global_rank != 0:
            return
        cuda = trainer.strategy.root_device.type == "cuda"
        timed = self.step_times[self.skip_steps:] or self.step_times
        step_s = statistics.median(timed)
        seq_len = trainer.datamodule.seq_len
        report = {
            "steps": len(self.step_times),
            "step_time_s": step_s,
            "first_steps_s": self.step_times[: self.skip_steps],
            "tokens_per_step": self.tokens_per_step,
            "tokens_per_s": self.tokens_per_step / step_s,
            "flops_per_token": pl_module.accounting(seq_len).flops_per_token,
            "peak_mem_gb": (torch.cuda.max_memory_allocated() if cuda
                            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30,
            "peak_mem_kind": "cuda max allocated" if cuda else "process peak RSS",
            "first_loss": self.losses[0] if self.losses else None,
            "last_loss": self.losses[-1] if self.losses else None,
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "world_size": trainer.world_size,
            "seq_len": seq_len,
        }
        self.out_file.parent.mkdir(parents=True, exist_ok=True)
        self.out_file.write_text(json.dumps(report, indent=2))


def _fmt(value, spec: str) -> str:
    width = int(spec.split(".")[0])
    return "-".rjust(width) if value is None else format(value, spec)


def _run_order(path: Path) -> tuple:
    """Runs named <setting>_<strategy>_<eager|compile>, listed by strategy, then compile, then setting."""
    setting, strategy, mode = (path.stem.split("_") + ["", "", ""])[:3]
    strategies, modes = ["single", "fsdp2", "fsdp1"], ["eager", "compile"]

    def rank(value: str, order: list[str]) -> int:
        return order.index(value) if value in order else len(order)

    return rank(strategy, strategies), rank(mode, modes), setting


def _fit_rows(out: Path) -> list[dict]:
    rows = []
    for status_file in sorted((out / "runs").glob("*.status"), key=_run_order):
        name = status_file.stem
        status = status_file.read_text().strip()
        report = out / "runs" / f"{name}.json"
        r = json.loads(report.read_text()) if report.exists() else {}
        peak = peak_flops(r.get("device", ""))
        mfu = r["tokens_per_s"] * r["flops_per_token"] / peak if r and peak else None
        rows.append({"name": name, "status": status, "step_ms": r.get("step_time_s", 0) * 1e3 if r else None,
                     "tokens_per_s": r.get("tokens_per_s"), "mfu": mfu, "peak_gb": r.get("peak_mem_gb"),
                     "loss": r.get("last_loss")})
    return rows


def _backbone_rows(out: Path) -> list[dict]:
    path = out / "backbone.json"
    if not path.exists():
        return [{"name": "backbone", "status": (out / "backbone.status").read_text().strip()
                 if (out / "backbone.status").exists() else "not run"}]
    from mot_lightning.model import TransformerConfig, backbone_stats  # the benchmark's flops per token

    report = json.loads(path.read_text())
    c = report["config"]
    cfg = TransformerConfig.from_preset(c["preset"], n_modalities=c["modalities"])
    flops = backbone_stats(cfg, c["seq_len"]).mean_flops_per_token  # backbone only: no head
    peak = peak_flops(report["machine"]["device"]) if c["device"].startswith("cuda") else peak_flops("")
    rows = []
    for case, r in report["results"].items():
        mem = r.get("peak_mb", r.get("saved_for_backward_mb"))
        rows.append({"name": f"backbone {case}", "status": "ok", "step_ms": r["median_ms"],
                     "tokens_per_s": r["tokens_per_s"],
                     "mfu": r["tokens_per_s"] * flops / peak if peak else None,
                     "peak_gb": mem / 1024 if mem is not None else None, "loss": None,
                     "ratio": r["ratio_vs_dense"]})
    return rows


def summarize(out: Path) -> str:
    lines = []
    tests = out / "gpu_tests.log"
    if tests.exists():
        tail = [ln for ln in tests.read_text().splitlines() if ln.strip()]
        lines.append(f"GPU-marked tests: {tail[-1] if tail else 'no output'}")
    lines.append("")
    header = f"| {'run':<28} | {'status':<26} | {'step ms':>9} | {'tokens/s':>10} | {'MFU':>6} | " \
             f"{'peak GB':>8} | {'loss@end':>8} |"
    lines += [header, "|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|"]
    rows = _fit_rows(out) + _backbone_rows(out)
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        cells = [f"{r['name']:<28}", f"{r['status']:<26}", _fmt(r.get("step_ms"), "9.1f"),
                 _fmt(r.get("tokens_per_s"), "10.0f"), f"{mfu:>6}", _fmt(r.get("peak_gb"), "8.2f"),
                 _fmt(r.get("loss"), "8.4f")]
        lines.append("| " + " | ".join(cells) + " |")
    by_name = {r["name"]: r for r in rows}
    lines.append("")
    for mode in ("eager", "compile"):
        mot, dense = by_name.get(f"mot_single_{mode}"), by_name.get(f"dense_single_{mode}")
        if mot and dense and mot.get("step_ms") and dense.get("step_ms"):
            ratio = mot["step_ms"] / dense["step_ms"]
            lines.append(f"MoT / dense step time, single device, {mode}: {ratio:.3f}")
    for r in rows:
        if r["name"].startswith("backbone ") and "ratio" in r and r["name"] != "backbone dense":
            lines.append(f"{r['name']} / backbone dense step time: {r['ratio']:.3f}")
    lines.append("MFU = tokens/s x training FLOPs per token (model accounting) / dense bf16 peak of the "
                 "device (table in mot_lightning/callbacks/throughput.py, or PEAK_TFLOPS); '-' where the "
                 "peak is unknown.")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["summarize"])
    p.add_argument("out", type=Path)
    args = p.parse_args(argv)
    table = summarize(args.out)
    (args.out / "gpu_check.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
