"""Gradient accumulation: ``accumulate_grad_batches: 2`` over micro-batches of B rows trains exactly as one
batch of 2B rows (the same rows, ``tests/app/fixed_batches.py``), and logs the whole step's losses.

Lightning backpropagates each micro-batch's token-mean loss divided by K, so the step optimises the mean of
K token means: the token mean of the big batch when micro-batches hold equal target counts, as these do
(every row: two documents of equal length). Real packed rows nearly do (``training/step_metrics.py``).
"""
from __future__ import annotations

import pytest
import torch

from tests.app.fixed_batches import train

TOL = 1e-10  # float64: the split changes summation order only; a wrong normalisation moves losses by ~1e-2


@pytest.mark.slow
def test_two_micro_batches_train_as_one_batch_of_twice_the_rows(tmp_path):
    train(tmp_path / "big.pt", accumulate=1, steps=3)
    train(tmp_path / "accumulated.pt", accumulate=2, steps=3)
    big, accumulated = torch.load(tmp_path / "big.pt"), torch.load(tmp_path / "accumulated.pt")
    for tag in ("train/loss", "train/loss_text", "train/loss_image", "train/grad_norm"):
        assert sorted(accumulated["metrics"][tag]) == [0, 1, 2], tag  # one value per optimizer step
        for step, value in big["metrics"][tag].items():
            rel = 1e-6 if tag == "train/grad_norm" else TOL  # the norm is logged in float32
            assert accumulated["metrics"][tag][step] == pytest.approx(value, rel=rel), (tag, step)
    losses = list(big["metrics"]["train/loss"].values())
    assert len(set(losses)) == 3  # the steps differ: equal curves are not an accident of constant values
    for name, w in big["weights"].items():
        torch.testing.assert_close(accumulated["weights"][name], w, rtol=TOL, atol=TOL, msg=name)
