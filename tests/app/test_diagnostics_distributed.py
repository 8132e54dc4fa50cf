"""``TowerHealth`` under FSDP2 (sharded DTensors: local squares summed over the ranks) and DDP on 2 CPU processes
logs the per-tower norms of one process on the same global batches, and they still add up to the clipped norm."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.app.controls_run import launch_env
from tests.app.distributed_runs import finish
from tests.app.tower_health_run import train
from tests.processes import start_module

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("strategy", ["fsdp2"])
def test_sharded_tower_norms_match_one_process(strategy, tmp_path):
    one = tmp_path / "one.pt"
    train(one)
    expected = torch.load(one)["metrics"]
    out = tmp_path / f"{strategy}.pt"
    finish(start_module("tests.app.tower_health_run", ["--strategy", strategy, "--devices", "2", "--out", str(out)],
                        nprocs=2, env=launch_env(), cwd=ROOT))
    got = torch.load(out)["metrics"]
    tags = [t for t in expected if t.startswith("diag/")]
    assert len(tags) > 30 and set(tags) == {t for t in got if t.startswith("diag/")}
    for tag in tags:
        for step, value in expected[tag].items():  # float64 training: sums in another order only
            assert got[tag][step] == pytest.approx(value, rel=1e-9, abs=1e-12), (tag, step)
    for step, clipped in got["train/grad_norm"].items():
        total = math.sqrt(sum(got[t][step] ** 2 for t in tags if t.startswith("diag/grad_norm/")))
        assert total == pytest.approx(clipped, rel=1e-6)  # train/grad_norm is logged in float32
