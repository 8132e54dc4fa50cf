"""``EMA``: the averages follow ``ema = decay * ema + (1 - decay) * w`` per optimizer step, are swapped in and
out exactly, travel in the checkpoint (``ema_state_dict``) and survive a resume bitwise."""
from __future__ import annotations

import pytest
import torch

from mot_lightning.callbacks.ema import EMA, ema_state_dict, ema_weights
from mot_lightning.checkpoints import load_checkpoint
from tests.app.controls_run import Snapshots, fit, tiny_module
from tests.numerics import assert_close

DECAY = 0.8


def _train(root, steps: int, ema: EMA, ckpt_path: str | None = None):
    torch.manual_seed(0)
    module, snapshots = tiny_module(), Snapshots()
    trainer = fit(module, root, steps, ckpt_path=ckpt_path, callbacks=[ema, snapshots])
    return module, snapshots, trainer


def test_averages_follow_the_formula_from_start_step(tmp_path):
    ema = EMA(decay=DECAY, start_step=2)
    module, snaps, _ = _train(tmp_path, 5, ema)
    averages = ema.averages()
    assert set(averages) == {n for n, _ in module.named_parameters()}
    for name, avg in averages.items():
        expected = snaps.weights[2][name]  # until start_step the average is the weights
        for step in (3, 4, 5):
            expected = DECAY * expected + (1 - DECAY) * snaps.weights[step][name]
        assert_close(avg, expected, reduction=4, msg=name)
    moved = [n for n in averages if not torch.equal(averages[n], snaps.weights[5][n])]
    assert len(moved) > len(averages) // 2  # an average, not the last weights


def test_swapped_puts_the_averages_in_and_the_weights_back_bitwise(tmp_path):
    ema = EMA(decay=DECAY)
    module, _, trainer = _train(tmp_path, 3, ema)
    live = {n: p.detach().clone() for n, p in module.named_parameters()}
    averages = ema.averages()
    with ema_weights(trainer, module):
        for n, p in module.named_parameters():
            assert torch.equal(p, averages[n]), n
    for n, p in module.named_parameters():
        assert torch.equal(p, live[n]), n
    trainer.save_checkpoint(tmp_path / "ema.ckpt")
    checkpoint = load_checkpoint(tmp_path / "ema.ckpt")  # weights-only: the averages are plain tensors
    assert all(torch.equal(checkpoint["state_dict"][n], w) for n, w in live.items())  # live weights stay
    swapped = ema_state_dict(checkpoint)
    assert set(swapped) == set(checkpoint["state_dict"])
    assert all(torch.equal(swapped[n], averages[n]) for n in averages)
    assert ema_state_dict({"state_dict": checkpoint["state_dict"]}) is None


def test_a_resumed_run_has_the_unbroken_runs_averages_bitwise(tmp_path):
    unbroken = EMA(decay=DECAY)
    _train(tmp_path / "a", 4, unbroken)
    first = EMA(decay=DECAY)
    _, _, trainer = _train(tmp_path / "b", 2, first)
    trainer.save_checkpoint(tmp_path / "step2.ckpt")
    resumed = EMA(decay=DECAY)
    _train(tmp_path / "b", 4, resumed, ckpt_path=str(tmp_path / "step2.ckpt"))
    assert resumed.step == unbroken.step == 4
    expected, got = unbroken.averages(), resumed.averages()
    for name, avg in expected.items():
        assert torch.equal(got[name], avg), name


def test_bad_decay_is_refused():
    with pytest.raises(ValueError, match="0 <= decay < 1"):
        EMA(decay=1.0)
