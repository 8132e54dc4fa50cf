"""Train a tiny ``MultiModalLM`` on a fixed list of global batches: in one process, or as the ranks of
DDP / FSDP2 (started by torchrun, or relaunched by Lightning once per rank), with any gradient accumulation.

    torchrun --standalone --nproc_per_node 2 -m tests.app.fixed_batches --strategy ddp --devices 2 \
        --accumulate 1 --clip 0.05 --out run.pt

Global batch ``s`` is ``token_batch(ROWS, seed=s)``: rank ``r`` of ``W`` takes its ``ROWS / W`` rows in
order, and accumulation splits those into ``K`` micro-batches. Every row holds the same number of
targets (two documents of ``T / 2`` tokens), so every split optimises the same loss: the mean of equal-count
token means is the token mean of the whole global batch. The model is built in float64 (the default dtype
while it is built; FSDP2 accepts no ``64-true`` precision), so splits agree to float64 rounding. Rank 0
writes ``run.pt``: the logged ``train/loss`` and ``train/grad_norm`` by step, and the final weights in full
(sharded ones gathered).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from dataclasses import fields, replace
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader

from mot_lightning.data.batch import MultiModalBatch
from mot_lightning.lit_module import MultiModalLM
from mot_lightning.model import TransformerConfig
from tests.objectives.batches import token_batch

ROWS, T, VOCAB = 8, 16, 40


def adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)


def rows(batch: MultiModalBatch, start: int, stop: int) -> MultiModalBatch:
    return replace(batch, **{f.name: getattr(batch, f.name)[start:stop] for f in fields(batch)
                             if getattr(batch, f.name) is not None})


class FixedBatches(pl.LightningDataModule):
    def __init__(self, steps: int, accumulate: int) -> None:
        super().__init__()
        self.steps, self.accumulate = steps, accumulate

    def train_dataloader(self) -> DataLoader:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        per_rank = ROWS // world
        per_micro = per_rank // self.accumulate
        micro = []
        for s in range(self.steps):
            mine = rows(token_batch(B=ROWS, T=T, V=VOCAB, seed=s), rank * per_rank, (rank + 1) * per_rank)
            micro += [rows(mine, k * per_micro, (k + 1) * per_micro) for k in range(self.accumulate)]
        return DataLoader(micro, batch_size=None)  # the batches as they are, in order


def strategy(name: str, devices: int):
    if name == "fsdp2":
        return ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1)
    return name  # "ddp" or "auto"


def train(out: Path, strategy_name: str = "auto", devices: int = 1, accumulate: int = 1,
          clip: float | None = None, steps: int = 3) -> None:
    pl.seed_everything(0)
    torch.set_default_dtype(torch.float64)  # configure_model builds the weights inside fit
    cfg = TransformerConfig(dim=32, n_layers=2, n_heads=4, n_modalities=3, sparsity="mot")
    model = MultiModalLM(backbone=cfg, vocab_size=VOCAB, optimizer=adamw)
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy=strategy(strategy_name, devices),
                         max_steps=steps, accumulate_grad_batches=accumulate,
                         gradient_clip_val=clip, logger=CSVLogger(out.parent / f"{out.stem}_logs"),
                         log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, use_distributed_sampler=False, limit_val_batches=0,
                         num_sanity_val_steps=0)
    try:
        trainer.fit(model, datamodule=FixedBatches(steps, accumulate))
    finally:
        torch.set_default_dtype(torch.float32)
    weights = {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().cpu()
               for k, v in model.state_dict().items()}  # every rank takes part in the gathers
    if trainer.is_global_zero:
        torch.save({"metrics": logged(Path(trainer.logger.log_dir) / "metrics.csv"), "weights": weights}, out)


def logged(path: Path) -> dict[str, dict[int, float]]:
    """tag -> {step: value} from a CSVLogger file."""
    out: dict[str, dict[int, float]] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            for tag, value in row.items():
                if tag != "step" and value not in ("", None):
                    out.setdefault(tag, {})[int(row["step"])] = float(value)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--strategy", default="auto", choices=["auto", "ddp", "fsdp2"])
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--accumulate", type=int, default=1)
    p.add_argument("--clip", type=float, default=None)
    p.add_argument("--steps", type=int, default=3)
    a = p.parse_args()
    train(a.out, a.strategy, a.devices, a.accumulate, a.clip, a.steps)


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # all is written: skip the interpreter's teardown of torch and Lightning (seconds per process)
