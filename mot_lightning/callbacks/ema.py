"""``EMA``: an exponential moving average of the weights, for sampling and generation metrics.

    trainer:
      callbacks:
        - class_path: mot_lightning.callbacks.ema.EMA
          init_args: {decay: 0.999}

After every optimizer step ``s`` (once per step under gradient accumulation)::

    ema = w                                  for s <= start_step
    ema = decay * ema + (1 - decay) * w      after

over every parameter of the module (frozen ones too: their average is themselves). Training, validation
losses and the checkpoint's ``state_dict`` keep the live weights; the averages are used only where asked:

- in a process that trains: ``with ema_weights(trainer, pl_module): ...`` puts them in place for the block
  (a no-op without an ``EMA`` callback), e.g. SampleLogger around its generation;
- from a checkpoint file: ``ema_state_dict(checkpoint)`` (``checkpoints/loading.py``) is the module
  ``state_dict`` with them in place (None when the run had no EMA), for ``mot generate`` / export
  to ``load_state_dict``.

Sharding. Under FSDP2 each rank averages its own shards of the parameters (no communication per step);
a checkpoint gathers them into full tensors (every rank calls ``state_dict``), and a resumed run keeps each
rank's rows of them again, so resume is exact whatever the strategy. Under DDP every rank holds the same
averages. Kept in float32 for low-precision parameters.

Why not Lightning's ``WeightAveraging`` / ``EMAWeightAveraging`` (2.6): it deep-copies the whole
LightningModule after calling ``configure_model`` outside the strategy (warned: sharded models do not
work; here the unsharded copy would also keep ``configure_model`` from sharding the real one), swaps
the averages in for every validation (the logged losses would change meaning) and at the end of training,
and writes them as the checkpoint's ``state_dict`` (the live weights under another key), which every
loader of this app would then read as the trained weights.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor, distribute_tensor

from mot_lightning.checkpoints.loading import EMA_FORMAT as FORMAT
from mot_lightning.checkpoints.loading import ema_state_dict  # noqa: F401  (the file side, kept importable here)
from mot_lightning.model.towers import clean_name


class EMA(pl.Callback):
    def __init__(self, decay: float = 0.999, start_step: int = 0) -> None:
        """
        Args:
            decay: weight of the old average at each optimizer step (0.999: a horizon of ~1000 steps).
            start_step: until this optimizer step the average is the weights themselves.
        """
        if not 0.0 <= decay < 1.0 or start_step < 0:
            raise ValueError(f"EMA needs 0 <= decay < 1 and start_step >= 0, got {decay} and {start_step}")
        self.decay, self.start_step = decay, start_step
        self.step = 0  # the optimizer step the averages have folded in
        self._ema: dict[str, Tensor] | None = None  # this rank's shards, by parameter name
        self._params: dict[str, nn.Parameter] | None = None
        self._pending: dict[str, Tensor] | None = None  # full tensors from a checkpoint, placed at the next use

    # ---- training
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._params = None  # the strategy has wrapped / sharded the module: look its parameters up again

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._materialize(pl_module)  # after any restore: the sharded strategy restores after on_fit_start

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step > self.step:  # an optimizer step happened (the last micro-batch of a step)
            self.update(pl_module, trainer.global_step)

    @torch.no_grad()
    def update(self, pl_module: nn.Module, step: int) -> None:
        """Fold the current weights in as those of optimizer step ``step``."""
        self._materialize(pl_module)
        ema = list(self._ema.values())
        weights = [_local(p).to(e.dtype) for p, e in zip(self._params.values(), ema)]
        if step <= self.start_step:
            torch._foreach_copy_(ema, weights)
        else:
            torch._foreach_mul_(ema, self.decay)
            torch._foreach_add_(ema, weights, alpha=1.0 - self.decay)
        self.step = step

    def _materialize(self, pl_module: nn.Module) -> None:
        if self._params is None:
            # FSDP2 registers the gathered parameters while a module is unsharded (the root stays so after a
            # no-grad forward, e.g. the sanity check) and frees their storage at the next reshard: hold the
            # sharded ones, which persist
            _reshard(pl_module)
            self._params = {clean_name(n): p for n, p in pl_module.named_parameters()}
        if self._pending is not None:
            missing = [n for n in self._params if n not in self._pending]
            if missing:
                rank_zero_warn(f"EMA: the checkpoint holds no average for {missing[:5]}: they start from the weights")
            self._ema = {n: _local_rows(self._pending[n], p) if n in self._pending else _fresh(p)
                         for n, p in self._params.items()}
            self._pending = None
        elif self._ema is None:
            self._ema = {n: _fresh(p) for n, p in self._params.items()}

    # ---- using the averages
    @contextmanager
    def swapped(self, pl_module: nn.Module) -> Iterator[None]:
        """The averages in place of ``pl_module``'s weights inside the block, the weights back after it.
        Every rank must enter it under FSDP2 (the forward passes inside gather the shards)."""
        self._materialize(pl_module)
        live = [_local(p) for p in self._params.values()]
        backup = [t.clone() for t in live]
        _reshard(pl_module)  # FSDP2 may hold gathered weights from the last forward: gather them anew
        with torch.no_grad():
            torch._foreach_copy_(live, [e.to(t.dtype) for e, t in zip(self._ema.values(), live)])
        try:
            yield
        finally:
            _reshard(pl_module)
            with torch.no_grad():
                torch._foreach_copy_(live, backup)

    def averages(self) -> dict[str, Tensor]:
        """Full tensors of the averages by parameter name (collective under FSDP2: call on every rank)."""
        if self._pending is not None:
            return dict(self._pending)
        if self._ema is None:
            return {}
        return {n: _full(e, self._params[n]) for n, e in self._ema.items()}

    # ---- checkpoints
    def state_dict(self) -> dict:
        return {"format": FORMAT, "decay": self.decay, "start_step": self.start_step, "step": self.step,
                "weights": self.averages()}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("format") != FORMAT:
            raise ValueError(f"EMA: the checkpoint's EMA state is not {FORMAT!r}: {sorted(state_dict)}")
        if float(state_dict["decay"]) != self.decay:
            rank_zero_warn(f"EMA: the checkpoint averaged with decay {state_dict['decay']}, this run uses "
                           f"{self.decay} from here on")
        self.step = int(state_dict["step"])
        self._pending = dict(state_dict["weights"]) or None


def find_ema(trainer: pl.Trainer | None) -> EMA | None:
    """The trainer's ``EMA`` callback, or None."""
    callbacks = getattr(trainer, "callbacks", None) or []
    return next((c for c in callbacks if isinstance(c, EMA)), None)


def ema_weights(trainer: pl.Trainer | None, pl_module: nn.Module):
    """Context manager: the EMA weights in place while inside (nothing changes without an EMA callback)."""
    ema = find_ema(trainer)
    return ema.swapped(pl_module) if ema is not None else nullcontext()


def _local(p: Tensor) -> Tensor:
    """The tensor this rank holds of a parameter (its shard under FSDP2), sharing its storage."""
    return p.to_local().detach() if isinstance(p, DTensor) else p.detach()


def _ema_dtype(p: Tensor) -> torch.dtype:
    return torch.float32 if p.dtype in (torch.bfloat16, torch.float16) else p.dtype


def _fresh(p: Tensor) -> Tensor:
    return _local(p).to(_ema_dtype(p), copy=True)


def _full(ema: Tensor, p: Tensor) -> Tensor:
    if isinstance(p, DTensor):
        return DTensor.from_local(ema, p.device_mesh, p.placements, shape=p.shape, stride=p.stride()).full_tensor()
    return ema.clone()


def _local_rows(full: Tensor, p: Tensor) -> Tensor:
    """This rank's shard of ``full`` for parameter ``p`` (no communication), in the averages' dtype."""
    full = full.to(p.device, _ema_dtype(p))
    if isinstance(p, DTensor):
        return distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None).to_local().clone()
    return full.clone()


def _reshard(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, FSDPModule):
            m.reshard()
