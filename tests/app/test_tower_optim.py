"""Per-tower learning-rate and weight-decay multipliers reach the optimizer's groups, follow the schedule,
show in the LR monitor's TensorBoard tags; ``params/trainable`` / ``params/frozen`` are logged."""
from __future__ import annotations

from functools import partial

import pytest
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

from mot_lightning.schedules import WarmupCosine
from mot_lightning.training.freezing import Freeze
from tests.app.controls_run import fit, tiny_module

BASE_LR, BASE_WD = 1e-2, 0.1


def _scalars(logger: TensorBoardLogger) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(logger.log_dir, size_guidance={SCALARS: 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_group_lrs_equal_base_times_multiplier_times_schedule_and_show_in_the_lr_monitor(tmp_path):
    torch.manual_seed(0)
    schedule = partial(WarmupCosine, warmup_steps=2, max_steps=6, min_lr_ratio=0.1)
    module = tiny_module(tower_lr={"image": 2.0, "speech": 0.5}, tower_weight_decay={"image": 0.0},
                         scheduler=schedule, freeze=Freeze(modalities=["text"], until_step=2))
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = fit(module, tmp_path, 6, logger=logger, callbacks=[LearningRateMonitor(logging_interval="step")])
    optimizer = trainer.optimizers[0]
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {f"{o}/{d}" for o in ("shared", "text", "image", "speech") for d in ("decay", "no_decay")}
    lr_mult = {"shared": 1.0, "text": 1.0, "image": 2.0, "speech": 0.5}
    wd_mult = {"shared": 1.0, "text": 1.0, "image": 0.0, "speech": 1.0}
    factor = trainer.lr_scheduler_configs[0].scheduler.factor
    for name, g in groups.items():
        owner, kind = name.split("/")
        assert g["initial_lr"] == pytest.approx(BASE_LR * lr_mult[owner], rel=1e-12)
        assert g["lr"] == pytest.approx(BASE_LR * lr_mult[owner] * factor(6), rel=1e-12)
        assert g["weight_decay"] == pytest.approx(BASE_WD * wd_mult[owner] if kind == "decay" else 0.0)
    towers = {n: module.net.backbone.layers[0].attn.wqkv.weights[k] for n, k in (("text", 0), ("image", 1))}
    for owner, p in towers.items():  # the parameters sit in their tower's group
        assert any(p is q for q in groups[f"{owner}/decay"]["params"])
    logged = _scalars(logger)
    for owner in ("image", "speech", "shared"):
        tag = f"lr-AdamW/{owner}/decay"
        assert sorted(logged[tag]) == list(range(6)), tag  # one value per optimizer step
        for step, lr in logged[tag].items():  # logged before the step's update: the factor of that step
            assert lr == pytest.approx(BASE_LR * lr_mult[owner] * factor(step), rel=1e-6), (tag, step)
    total = sum(p.numel() for p in module.parameters())
    text = sum(p.numel() for n, p in module.named_parameters() if n.startswith("net.backbone.")
               and n.endswith(".weights.0"))
    assert logged["params/frozen"] == {0: text, 2: 0}  # at the start, and when unfrozen at step 2
    assert logged["params/trainable"] == {0: total - text, 2: total}


def test_without_multipliers_two_groups_as_before(tmp_path):
    module = tiny_module()
    trainer = fit(module, tmp_path, 1)
    groups = trainer.optimizers[0].param_groups
    assert [g["name"] for g in groups] == ["decay", "no_decay"]
    no_decay = {id(p) for p in groups[1]["params"]}
    norms = [w for m in module.modules() if type(m).__name__ == "UntiedRMSNorm" for w in m.weights]
    assert norms and all(id(w) in no_decay for w in norms) and id(module.net.embed.weight) in no_decay
    assert id(module.net.head.weight) not in no_decay and groups[1]["weight_decay"] == 0.0


@pytest.mark.parametrize("kw, match", [
    ({"tower_lr": {"image": 2.0}, "towers": [0, 0, 1]}, "tower 0 serves text\\+image"),
    ({"tower_lr": {"video": 2.0}}, "unknown modality"),
    ({"tower_lr": {"image": -1.0}}, ">= 0"),
    ({"tower_weight_decay": {"image": 2.0}, "sparsity": "dense"}, "has none"),
])
def test_bad_multipliers_are_refused_with_names(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        fit(tiny_module(**kw), tmp_path, 1)
