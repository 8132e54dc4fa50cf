"""Learning-rate schedules, injected as ``LRSchedulerCallable`` (YAML ``class_path``)."""
from __future__ import annotations

import math
import warnings

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class WarmupCosine(LambdaLR):
    """Linear warmup from 0 to the optimizer's lr over ``warmup_steps``, then cosine decay to
    ``min_lr_ratio * lr`` at ``max_steps`` (held there afterwards). Steps are optimizer steps; a run
    shorter than the warmup stays in it (its steps are the first steps of a longer run).

    ``max_steps=None`` (the default) means "the training length": ``mot fit`` fills it from
    ``trainer.max_steps`` before building anything (``lit_cli.fill_schedule_length``), so the two
    cannot disagree unless a config sets this one explicitly."""

    def __init__(self, optimizer: Optimizer, warmup_steps: int = 100, max_steps: int | None = None,
                 min_lr_ratio: float = 0.1) -> None:
        if max_steps is None:
            raise ValueError("WarmupCosine needs max_steps: `mot fit` fills it from trainer.max_steps; "
                             "outside the CLI pass max_steps=<optimizer steps>")
        if warmup_steps < 0 or max_steps < 1:
            raise ValueError(f"need warmup_steps >= 0 and max_steps >= 1, got {warmup_steps} and {max_steps}")
        if warmup_steps > max_steps:  # a short debug run: it stays in the warmup, as the first steps of a long one
            warnings.warn(f"WarmupCosine: the run ({max_steps} steps) ends inside the warmup ({warmup_steps} steps); "
                          "the learning rate never reaches its peak", stacklevel=2)
        self.warmup_steps, self.max_steps, self.min_lr_ratio = warmup_steps, max_steps, min_lr_ratio
        super().__init__(optimizer, self.factor)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
