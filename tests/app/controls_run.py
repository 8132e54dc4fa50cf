"""Train a tiny ``MultiModalLM`` with the research controls (warm start, freezing, tower multipliers, EMA) on
fixed token batches: in one process, or as the ranks of DDP / FSDP2 (Lightning relaunches this module once
per rank).

    python -m tests.app.controls_run --strategy fsdp2 --devices 2 --steps 4 --out run.pt \
        --freeze '{"modalities": ["text"], "rows": ["embed", "head"], "until_step": 3}' --ema 0.9

Step ``s`` trains on ``token_batch(ROWS, seed=s % 2)`` (rank ``r`` of ``W`` takes its ``ROWS / W`` rows); a
resumed run restarts the loader's list, so one resumed at an even step sees what the unbroken run saw. The model
is built in float64, so strategies agree to float64 rounding. Every parameter (full tensors) and whether it has
optimizer state are recorded after each optimizer step; rank 0 writes them with the EMA averages to ``--out``.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import fields, replace
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader

from mot_lightning.callbacks.ema import EMA
from mot_lightning.data.batch import MultiModalBatch
from mot_lightning.lit_module import MultiModalLM
from mot_lightning.model import TransformerConfig
from mot_lightning.training.freezing import Freeze
from mot_lightning.training.warm_start import WarmStart
from tests.objectives.batches import token_batch

ROWS, T, VOCAB = 4, 16, 40
LAYOUT = {"text": 13, "special": 7, "image": 10, "speech": 10}  # token_batch: ids 0-19 text, 20-29, 30-39


def rows(batch: MultiModalBatch, start: int, stop: int) -> MultiModalBatch:
    return replace(batch, **{f.name: getattr(batch, f.name)[start:stop] for f in fields(batch)
                             if getattr(batch, f.name) is not None})


class Batches(pl.LightningDataModule):
    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = steps

    def train_dataloader(self) -> DataLoader:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        per_rank = ROWS // world
        mine = [rows(token_batch(B=ROWS, T=T, V=VOCAB, seed=s % 2), rank * per_rank, (rank + 1) * per_rank)
                for s in range(self.steps)]
        return DataLoader(mine, batch_size=None)


def adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)


def tiny_module(**kw) -> MultiModalLM:
    """A 3-modality MoT (dim 32, 2 layers) over the token_batch vocabulary; ``kw``: config fields / module args."""
    cfg_keys = {f.name for f in fields(TransformerConfig) if f.init}
    cfg = TransformerConfig(**{"dim": 32, "n_layers": 2, "n_heads": 4, "n_modalities": 3, "sparsity": "mot",
                               **{k: v for k, v in kw.items() if k in cfg_keys}})
    module_kw = {k: v for k, v in kw.items() if k not in cfg_keys}
    return MultiModalLM(backbone=cfg, vocab_size=module_kw.pop("vocab_size", VOCAB), optimizer=adamw,
                        vocab_layout=module_kw.pop("vocab_layout", LAYOUT), **module_kw)


def full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if isinstance(t, DTensor) else t).detach().cpu().clone()


class Snapshots(pl.Callback):
    """After every optimizer step: every parameter (full) and whether the optimizer holds state for it."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}
        self.has_state: dict[int, dict[str, bool]] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self._record(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._record(trainer, pl_module)

    def _record(self, trainer, pl_module) -> None:
        step = trainer.global_step
        self.weights[step] = {n: full(p) for n, p in pl_module.named_parameters()}
        state = trainer.optimizers[0].state
        self.has_state[step] = {n: len(state.get(p, {})) > 0 for n, p in pl_module.named_parameters()}


def strategy(name: str, devices: int):
    if name == "fsdp2":
        return ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1)
    return name


def fit(module: MultiModalLM, root: Path, steps: int, *, strategy_name: str = "auto", devices: int = 1,
        ckpt_path: str | None = None, callbacks: list | None = None, logger=False) -> pl.Trainer:
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy=strategy(strategy_name, devices),
                         max_steps=steps, logger=logger, log_every_n_steps=1, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                         limit_val_batches=0, num_sanity_val_steps=0, callbacks=callbacks or [],
                         default_root_dir=str(root))
    trainer.fit(module, datamodule=Batches(steps), ckpt_path=ckpt_path)
    return trainer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--strategy", default="auto", choices=["auto", "ddp", "fsdp2"])
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--freeze", type=json.loads, default=None)
    p.add_argument("--init_from", type=json.loads, default=None)
    p.add_argument("--ema", type=float, default=None)
    p.add_argument("--ckpt_path", default=None)
    p.add_argument("--save", default=None, help="checkpoint written after training (FSDP2: a sharded directory)")
    a = p.parse_args()
    pl.seed_everything(0)
    torch.set_default_dtype(torch.float64)  # configure_model builds the weights inside fit: strategies agree
    module = tiny_module(freeze=Freeze(**a.freeze) if a.freeze else None,  # to float64 rounding
                         init_from=WarmStart(**a.init_from) if a.init_from else None)
    snapshots = Snapshots()
    ema = EMA(decay=a.ema) if a.ema is not None else None
    trainer = fit(module, a.out.parent, a.steps, strategy_name=a.strategy, devices=a.devices,
                  ckpt_path=a.ckpt_path, callbacks=[snapshots] + ([ema] if ema else []))
    if a.save:
        trainer.save_checkpoint(a.save)
    averages = ema.averages() if ema else {}  # collective under FSDP2: every rank
    if trainer.is_global_zero:
        torch.save({"weights": snapshots.weights, "has_state": snapshots.has_state,
                    "ema": {k: v.cpu() for k, v in averages.items()}}, a.out)


if __name__ == "__main__":
    main()
