"""Generation from inside a training run, correct under every strategy (``SampleLogger``,
``GenerationMetrics``).

    result = generate_in_run(trainer, pl_module, lambda: tasks.caption_to_image(captions))
    if result is not None:  # global rank 0
        writer.add_image(...)

``fn`` samples with ``pl_module.net`` (e.g. through ``sampling.GenerationTasks``); call
``generate_in_run`` on every rank at the same point of the run. Who runs ``fn``:

- **the model is sharded** (FSDP2: DTensor parameters; FSDP1: ``FullyShardedDataParallel`` modules):
  every rank runs ``fn``. Each forward pass gathers every block's shards, a collective, so every rank has to
  make the same forward calls in the same order: ``fn`` must do the same work on every rank (the same
  prompts, read the same way, and the same seeds; ``GenerationTasks`` seeds each task from its settings).
  The ranks then hold the same gathered weights and inputs and run the same kernels, so they sample the
  same ids and stop at the same step. Under FSDP1 ``fn`` runs inside the root wrapper's forward (as Lightning
  runs ``validation_step``), which gathers the root's own parameters (embeddings, head, final norm).
- **otherwise** (one device, DDP): global rank 0 alone, on ``pl_module`` itself, not the DDP wrapper (whose
  forward may broadcast buffers, a collective the other ranks would not join). The other ranks go on to
  their next step and wait for rank 0 in its gradient all-reduce: the same wall time as if every rank
  generated, without the work. Generation must end within the process group's timeout (Lightning's
  default: 30 minutes).

Around ``fn``, wherever it runs: no gradients, the network in eval mode (its mode restored after), the EMA
weights in place when ``use_ema`` and the trainer has an ``EMA`` callback (first folding in the current
optimizer step if that callback's own hook has not yet: samples at step N use the average through step
N), and the throughput clock paused (``throughput.paused_clock``), so tokens/s and MFU measure training.

Returns ``fn()``'s result on global rank 0 and None on the other ranks.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import TypeVar

import lightning.pytorch as pl
import torch
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.distributed.tensor import DTensor

from mot_lightning.callbacks.ema import find_ema
from mot_lightning.callbacks.throughput import paused_clock

T = TypeVar("T")


def is_sharded(trainer: pl.Trainer, pl_module: nn.Module) -> bool:
    """Whether the module's forward passes need every rank: FSDP2 (DTensor parameters) or FSDP1 wrappers."""
    if any(isinstance(p, DTensor) for p in pl_module.parameters()):
        return True
    root = getattr(trainer.strategy, "model", None) or pl_module
    return any(isinstance(m, FullyShardedDataParallel) for m in root.modules())


def generate_in_run(trainer: pl.Trainer, pl_module: pl.LightningModule, fn: Callable[[], T],
                    use_ema: bool = True) -> T | None:
    """Run ``fn`` where it is correct under the trainer's strategy (module docstring); its result on global
    rank 0, None elsewhere."""
    sharded = is_sharded(trainer, pl_module)
    if not sharded and not trainer.is_global_zero:
        return None
    net = pl_module.net
    was_training = net.training
    with paused_clock(trainer), torch.no_grad(), _ema(trainer, pl_module, use_ema):
        net.eval()
        try:
            root = trainer.strategy.model
            if sharded and isinstance(root, FullyShardedDataParallel) and root.module is pl_module:
                result = _inside_forward(root, pl_module, fn)
            else:
                result = fn()
        finally:
            net.train(was_training)
    return result if trainer.is_global_zero else None


def _ema(trainer: pl.Trainer, pl_module: nn.Module, use_ema: bool):
    ema = find_ema(trainer) if use_ema else None
    if ema is None:
        return nullcontext()
    if trainer.training and ema.step < trainer.global_step:  # its on_train_batch_end has not run yet
        ema.update(pl_module, trainer.global_step)  # what that hook would do; it then finds the step done
    return ema.swapped(pl_module)


def _inside_forward(root: nn.Module, module: nn.Module, fn: Callable[[], T]) -> T:
    """``fn()`` as the body of ``root``'s forward (``root`` wraps ``module``): FSDP1 gathers the root's
    parameters before, and frees them after, as for a training or validation step."""
    module.forward = lambda: fn()  # an instance attribute shadows the class's forward while inside
    try:
        return root()
    finally:
        del module.forward
