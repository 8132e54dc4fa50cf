"""The GPU recipe's switches on CPU, through `mot fit`: ``trainer.precision bf16-mixed`` (autocast) and
``model.compile true`` (inductor) train like the float32 eager run from the same seed and data."""
from pathlib import Path

import pytest
import torch
import torch._inductor.config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch._dynamo.utils import counters

from tests.app.conftest import CONFIGS, run_fit

BF16_EPS = torch.finfo(torch.bfloat16).eps
FP32_EPS = torch.finfo(torch.float32).eps
STEPS = ["--config", str(CONFIGS / "speech/mot.yaml"), "--trainer.max_steps", "3",
         "--trainer.log_every_n_steps", "1"]
NO_VAL = ["--trainer.limit_val_batches", "0"]


def train_losses(save_dir: Path) -> dict[int, float]:
    """``train/loss`` by optimizer step from the one run under ``save_dir``."""
    events = sorted(save_dir.rglob("events.out.tfevents.*"))
    assert events, f"no TensorBoard events under {save_dir}"
    acc = EventAccumulator(str(events[0].parent), size_guidance={"scalars": 0})
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars("train/loss")}


@pytest.fixture(scope="module")
def fp32_eager(demo_env, tmp_path_factory) -> dict[int, float]:
    save_dir = tmp_path_factory.mktemp("fp32_eager")
    run_fit([*STEPS, *NO_VAL, "--trainer.precision", "32-true"], demo_env, save_dir)
    return train_losses(save_dir)


def test_bf16_mixed_first_loss_is_within_bf16_rounding_of_fp32(fp32_eager, demo_env, tmp_path):
    run_fit([*STEPS, *NO_VAL, "--trainer.precision", "bf16-mixed"], demo_env, tmp_path)
    bf16 = train_losses(tmp_path)
    assert sorted(bf16) == sorted(fp32_eager) == [0, 1, 2]
    assert all(torch.isfinite(torch.tensor(v)) for v in bf16.values())
    # same weights, same batch: the first loss (a mean over every target token) moves by < one bf16 rounding
    assert abs(bf16[0] - fp32_eager[0]) <= BF16_EPS * fp32_eager[0]


@pytest.mark.slow
@torch._inductor.config.patch(force_disable_caches=True)  # cache keys leave out ATEN_CPU_CAPABILITY
def test_compiled_model_trains_like_eager_with_bounded_graphs(fp32_eager, demo_env, tmp_path):
    """compile: true through configure_model. Graphs: training, validation (inference mode), and one more
    when a validation batch of another row count (a set's last, partial batch) makes that size dynamic."""
    torch._dynamo.reset()
    counters.clear()
    run_fit([*STEPS, "--model.compile", "true", "--trainer.precision", "32-true",
             "--trainer.limit_val_batches", "1", "--trainer.val_check_interval", "2"], demo_env, tmp_path)
    compiled = train_losses(tmp_path)
    assert sorted(compiled) == [0, 1, 2]
    assert abs(compiled[0] - fp32_eager[0]) <= 64 * FP32_EPS * fp32_eager[0]
    assert counters["stats"]["unique_graphs"] <= 3, dict(counters["stats"])
