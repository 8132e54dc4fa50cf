"""FSDP2's meta-device path (``model.sharded_init``, ``model/meta_init.py``) on 2 CPU processes (gloo), against
the whole-model build: the same weights bitwise (and those of one process), the same training, copied towers
equal after sharding, and a dense -> MoT warm start into the shards. Freezing on this path is checked by
``test_controls_distributed.py`` (its FSDP2 runs take it by default)."""
from __future__ import annotations

import json

import pytest
import torch

from tests.app.controls_run import FSDP2, ONE_PROCESS
from tests.app.test_golden_curve import RTOL
from tests.app.test_warm_start import write_checkpoint

EAGER = (*FSDP2, "--sharded_init", "false")
COPY = ("--steps", "1", "--strategy", "fsdp2", "--devices", "2", "--backbone", json.dumps({"tower_init": "copy"}))


@pytest.mark.slow
@pytest.mark.multiprocess
def test_meta_path_weights_and_losses_equal_the_whole_model_build(controls):
    meta, eager, single = controls(FSDP2, EAGER, ONE_PROCESS)
    for name, w in eager["weights"][0].items():  # before training: same seed, same weights
        assert torch.equal(meta["weights"][0][name], w), name
        assert torch.equal(single["weights"][0][name], w), name  # and one process (no sharding) too
    assert sorted(meta["losses"]) == sorted(eager["losses"]) == [1, 2, 3, 4]
    for step, loss in eager["losses"].items():  # the golden-curve test's tolerance
        assert abs(meta["losses"][step] - loss) <= RTOL * abs(loss), (step, meta["losses"][step], loss)


@pytest.fixture(scope="module")
def one_step_runs(controls, tmp_path_factory) -> dict:
    """One-step runs, started together: copied towers (2 processes); a dense -> MoT warm start by 2 processes
    and by one."""
    root = tmp_path_factory.mktemp("sharded_init")
    dense = write_checkpoint(root / "dense.ckpt", sparsity="dense")
    start = ("--steps", "1", "--init_from", json.dumps({"checkpoint": str(root / "dense.ckpt")}))
    copy, sharded, single = controls(COPY, (*start, "--strategy", "fsdp2", "--devices", "2"), start)
    return {"copy": copy, "warm_sharded": sharded, "warm_single": single, "dense": dense}


@pytest.mark.slow
@pytest.mark.multiprocess
def test_copied_towers_are_equal_after_sharding(one_step_runs):
    run = one_step_runs["copy"]
    weights = run["weights"][0]
    towers = [n for n in weights if n.startswith("net.backbone.") and n.endswith(".weights.1")]
    assert len(towers) > 10
    for name in towers:
        first = weights[name[:-1] + "0"]
        for k in (1, 2):
            assert torch.equal(weights[name[:-1] + str(k)], first), name
    assert weights["net.backbone.layers.0.ffn.w13.weights.0"].std() > 0


@pytest.mark.slow
@pytest.mark.multiprocess
def test_dense_warm_start_fills_every_tower_of_the_shards(one_step_runs):
    sharded, single, dense = (one_step_runs[k] for k in ("warm_sharded", "warm_single", "dense"))
    for name, w in single["weights"][0].items():  # one process (bare model) and the shards agree bitwise
        assert torch.equal(sharded["weights"][0][name], w), name
    weights = sharded["weights"][0]
    for name, value in dense.items():
        if ".weights.0" in name:  # an untied slot of the dense model: every tower of the MoT took it
            for k in range(3):
                assert torch.equal(weights["net." + name[:-1] + str(k)], value.double()), (name, k)
        else:
            assert torch.equal(weights["net." + name], value.double()), name
