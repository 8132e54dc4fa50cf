"""Freezing and EMA under DDP and FSDP2 (two CPU processes, gloo): the same training as one process, frozen
weights and rows bitwise unchanged, late-unfrozen gradients averaged across ranks, and a sharded checkpoint
resumed with the unbroken run's weights and averages. The runs (``controls_run.py``) are shared with the
scaling guide's resharding test and the EMA consolidation test (the session fixture ``controls``)."""
from __future__ import annotations

import pytest
import torch

from tests.app.controls_run import DDP, FSDP2, LAYOUT, ONE_PROCESS, resumed

TOL = 1e-9  # float64: strategies change summation order only; a missing gradient average moves weights ~1e-3


def close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    for name, w in b.items():
        torch.testing.assert_close(a[name], w, rtol=TOL, atol=TOL * float(w.abs().max()), msg=name)


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_freezing_and_ema_train_as_one_process(controls, strategy):
    single, multi = controls(ONE_PROCESS, {"ddp": DDP, "fsdp2": FSDP2}[strategy])
    close(multi["weights"][4], single["weights"][4])  # after unfreezing at step 2: every gradient averaged
    close(multi["ema"], single["ema"])
    text = LAYOUT["text"] + LAYOUT["special"]
    start = multi["weights"][0]
    for name, w in multi["weights"][2].items():  # frozen for two steps: bitwise, and no optimizer state
        if name.startswith("net.backbone.") and name.endswith(".weights.0"):
            assert torch.equal(w, start[name]) and not multi["has_state"][2][name], name
        if name in ("net.embed.weight", "net.head.weight"):
            assert torch.equal(w[:text], start[name][:text]), name
    assert multi["has_state"][4]["net.backbone.layers.0.ffn.w13.weights.0"]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_fsdp2_sharded_checkpoint_resumes_weights_and_averages_bitwise(controls):
    """The unbroken 2-process run saved a sharded checkpoint after step 2 (while the text tower was still
    frozen) and trained on; 2 processes resumed from it unfreeze at step 2 and land on its step-4 weights and
    averages, bitwise."""
    [unbroken] = controls(FSDP2)
    assert unbroken["ckpt"].is_dir()  # sharded: the averages travel in meta.pt, gathered
    [again] = controls(resumed(unbroken["ckpt"], devices=2))
    assert sorted(again["weights"]) == [2, 3, 4]  # it started at step 2
    for name, w in unbroken["weights"][4].items():
        assert torch.equal(again["weights"][4][name], w), name
    for name, avg in unbroken["ema"].items():
        assert torch.equal(again["ema"][name], avg), name
