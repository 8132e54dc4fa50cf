"""Learning-rate schedules, injected as ``LRSchedulerCallable`` (YAML ``class_path``)."""
from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class WarmupCosine(LambdaLR):
    """Linear warmup from 0 to the optimizer's lr over ``warmup_steps``, then cosine decay to
    ``min_lr_ratio * lr`` at ``max_steps`` (held there afterwards). Steps are optimizer steps."""

    def __init__(self, optimizer: Optimizer, warmup_steps: int = 100, max_steps: int = 10_000,
                 min_lr_ratio: float = 0.1) -> None:
        if not 0 <= warmup_steps <= max_steps:
            raise ValueError(f"need 0 <= warmup_steps <= max_steps, got {warmup_steps} and {max_steps}")
        self.warmup_steps, self.max_steps, self.min_lr_ratio = warmup_steps, max_steps, min_lr_ratio
        super().__init__(optimizer, self.factor)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
