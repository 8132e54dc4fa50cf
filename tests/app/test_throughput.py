"""Throughput and MFU (``callbacks/throughput.py``): windows hold wall time between optimizer steps less
validation and generation from callbacks (a slow data loader counts), MFU = FLOP/s per device / the peak it
names, and under gradient accumulation everything is counted once per optimizer step."""
from __future__ import annotations

import statistics
import time

import lightning.pytorch as pl
import pytest
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset

from mot_lightning.callbacks import FlopsThroughput
from mot_lightning.callbacks.generation import generate_in_run
from mot_lightning.callbacks.throughput import peak_flops
from tests.app.conftest import CONFIGS, run_dir, run_fit
from tests.app.controls_run import T, tiny_module
from tests.app.fixed_batches import logged
from tests.app.test_training import only_version, scalars
from tests.objectives.batches import token_batch

SLEEP = 1.0  # seconds; an optimizer step of the tiny test model, loading its demo batches, takes ~0.3 s


class Sleep(pl.Callback):
    """Stands in for slow work outside training steps: sample generation after a batch (through the helper
    SampleLogger and GenerationMetrics generate with), and a long validation (before any other of its hooks
    could pause a clock: the throughput callback's own runs after this one)."""

    def on_train_batch_end(self, trainer, pl_module, *args, **kwargs) -> None:
        generate_in_run(trainer, pl_module, lambda: time.sleep(SLEEP))

    def on_validation_start(self, *args, **kwargs) -> None:
        time.sleep(SLEEP)


def test_peaks_of_common_accelerators():
    assert peak_flops("NVIDIA H100 80GB HBM3") == pytest.approx(989.4e12)
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA H200") == pytest.approx(989.4e12)
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("NVIDIA L40S") == 362e12
    assert peak_flops("NVIDIA L4") == 121e12
    assert peak_flops("NVIDIA A10G") == 70e12  # the AWS part; the A10 is 125
    assert peak_flops("NVIDIA A10") == 125e12
    assert peak_flops("Some Future Accelerator") is None


def test_the_peak_comes_from_yaml_or_the_device():
    cpu = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    assert FlopsThroughput()._resolve_peak(cpu) is None  # CPU: no MFU unless a peak is given
    assert FlopsThroughput(peak_flops_per_device=2.5e12)._resolve_peak(cpu) == 2.5e12
    with pytest.raises(ValueError, match="peak_flops_per_device must be > 0"):
        FlopsThroughput(peak_flops_per_device=0)


@pytest.mark.slow
def test_windows_exclude_validation_and_count_optimizer_steps(demo_env, tmp_path):
    steps, accumulate, rows, seq_len, peak = 3, 2, 2, 128, 1e11
    run_fit(["--config", str(CONFIGS / "speech/mot.yaml"), "--trainer.max_steps", str(steps),
             "--trainer.accumulate_grad_batches", str(accumulate), "--trainer.val_check_interval", "2",
             "--trainer.limit_val_batches", "2", "--trainer.log_every_n_steps", "1",
             "--throughput.log_every_n_steps", "1", "--throughput.peak_flops_per_device", str(peak),
             "--trainer.callbacks+=tests.app.test_throughput.Sleep"], demo_env, tmp_path)
    logged = scalars(only_version(run_dir(tmp_path / "speech" / "mot")))
    tags = {tag: dict(points) for tag, points in logged.items()}
    per_step = accumulate * rows * seq_len  # positions of one optimizer step
    assert tags["train/total_tokens"] == {s: float((s + 1) * per_step) for s in range(steps)}  # once per step
    assert sorted(tags["train/tokens_per_s"]) == sorted(tags["train/loss"]) == list(range(steps))
    assert tags["train/mfu_peak_tflops"] == {0: pytest.approx(peak / 1e12)}
    flops_per_token = tags["params/flops_per_token"][0]
    for s in range(steps):
        seconds = per_step / tags["train/tokens_per_s"][s]
        assert seconds < SLEEP, (s, seconds)  # neither the sleeps after batches nor validation counted
        flops_per_s = tags["train/flops_per_s_per_device"][s]
        assert flops_per_s == pytest.approx(flops_per_token * tags["train/tokens_per_s"][s], rel=1e-5)
        assert tags["train/mfu"][s] == pytest.approx(flops_per_s / peak, rel=1e-5)
    assert "train/peak_memory_gb" not in tags  # CPU: no device memory to report


class SlowBatches(Dataset):
    """Token batches of 2 rows, each taking ``delay`` seconds to load (in the training process: no
    workers)."""

    def __init__(self, n: int, delay: float) -> None:
        self.n, self.delay = n, delay

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        time.sleep(self.delay)
        return token_batch(B=2, T=T, seed=i)


def seconds_per_step(tmp_path, delay: float, steps: int = 4) -> dict[int, float]:
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=CSVLogger(tmp_path),
                         log_every_n_steps=1, callbacks=[FlopsThroughput(log_every_n_steps=1)],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0)
    loader = DataLoader(SlowBatches(steps + 2, delay), batch_size=None)  # more batches than steps: always one
    trainer.fit(tiny_module(), train_dataloaders=loader)  # being loaded ahead
    tokens_per_s = logged(tmp_path / "lightning_logs" / "version_0" / "metrics.csv")["train/tokens_per_s"]
    assert sorted(tokens_per_s) == list(range(steps))
    return {s: 2 * T / v for s, v in tokens_per_s.items()}  # one optimizer step: 2 rows of T positions


def test_a_slow_data_loader_lowers_tokens_per_s(tmp_path):
    delay = 0.5
    fast = seconds_per_step(tmp_path / "fast", delay=0.0)
    slow = seconds_per_step(tmp_path / "slow", delay=delay)
    # Lightning loads one batch ahead: by the first step's start (where the clock starts) the first two
    # batches are loaded; each later step's time holds the loading of the batch after it. The sleep is a
    # lower bound on every such step, whatever the machine's load
    for step in range(1, len(slow)):
        assert slow[step] >= delay, (step, slow)
    # the control: without the delay a step is far shorter (~0.02 s). Step 0 is left out (it holds one-time
    # setup: 1.04 s once on a loaded CI machine), and the median of the rest absorbs one step stalled by other
    # processes on the same cores (0.77 s seen with 5 processes on 2 cores)
    assert statistics.median(fast[step] for step in range(1, len(fast))) < delay, fast
