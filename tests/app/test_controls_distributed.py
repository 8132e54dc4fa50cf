"""Freezing and EMA under DDP and FSDP2 (two CPU processes, gloo): the same training as one process, frozen
weights and rows bitwise unchanged, late-unfrozen gradients averaged across ranks, and a sharded checkpoint
resumed with the unbroken run's weights and averages."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.app.controls_run import LAYOUT

ROOT = Path(__file__).resolve().parents[2]
FREEZE = {"modalities": ["text"], "rows": ["embed", "head"], "until_step": 2}
TOL = 1e-9  # float64: strategies change summation order only; a missing gradient average moves weights ~1e-3


def run(tmp_path: Path, name: str, *args: str) -> dict:
    out = tmp_path / f"{name}.pt"
    cmd = [sys.executable, "-m", "tests.app.controls_run", "--out", str(out), "--freeze", json.dumps(FREEZE),
           "--ema", "0.8", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return torch.load(out)


def close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    for name, w in b.items():
        torch.testing.assert_close(a[name], w, rtol=TOL, atol=TOL * float(w.abs().max()), msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_freezing_and_ema_train_as_one_process(tmp_path, strategy):
    single = run(tmp_path, "single", "--steps", "4")
    multi = run(tmp_path, strategy, "--steps", "4", "--strategy", strategy, "--devices", "2")
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
def test_fsdp2_sharded_checkpoint_resumes_weights_and_averages_bitwise(tmp_path):
    unbroken = run(tmp_path, "unbroken", "--steps", "4", "--strategy", "fsdp2", "--devices", "2")
    ckpt = tmp_path / "step2.ckpt"
    run(tmp_path, "first", "--steps", "2", "--strategy", "fsdp2", "--devices", "2", "--save", str(ckpt))
    assert ckpt.is_dir()  # sharded: the averages travel in meta.pt, gathered
    resumed = run(tmp_path, "resumed", "--steps", "4", "--strategy", "fsdp2", "--devices", "2",
                  "--ckpt_path", str(ckpt))
    for name, w in unbroken["weights"][4].items():
        assert torch.equal(resumed["weights"][4][name], w), name
    for name, avg in unbroken["ema"].items():
        assert torch.equal(resumed["ema"][name], avg), name
