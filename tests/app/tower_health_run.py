"""``TowerHealth`` on the fixed batches of ``fixed_batches.py``, in one process or as the ranks of DDP / FSDP2
(started by torchrun); rank 0 writes the logged metrics to ``--out``.

    torchrun --standalone --nproc_per_node 2 -m tests.app.tower_health_run --strategy fsdp2 --devices 2 --out run.pt
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger

from mot_lightning.callbacks import TowerHealth
from mot_lightning.lit_module import MultiModalLM
from mot_lightning.model import TransformerConfig
from tests.app.fixed_batches import VOCAB, FixedBatches, adamw, logged, strategy

STEPS, CLIP = 2, 0.05


def train(out: Path, strategy_name: str = "auto", devices: int = 1) -> None:
    pl.seed_everything(0)
    torch.set_default_dtype(torch.float64)  # the ranks' sums agree with one process to float64 rounding
    cfg = TransformerConfig(dim=32, n_layers=2, n_heads=4, n_modalities=3, sparsity="mot")
    model = MultiModalLM(backbone=cfg, vocab_size=VOCAB, optimizer=adamw)
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy=strategy(strategy_name, devices),
                         max_steps=STEPS, gradient_clip_val=CLIP, logger=CSVLogger(out.parent / f"{out.stem}_logs"),
                         log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, use_distributed_sampler=False, limit_val_batches=0,
                         num_sanity_val_steps=0, callbacks=[TowerHealth(every_n_steps=1)])
    try:
        trainer.fit(model, datamodule=FixedBatches(STEPS, 1))
    finally:
        torch.set_default_dtype(torch.float32)
    if trainer.is_global_zero:
        torch.save({"metrics": logged(Path(trainer.logger.log_dir) / "metrics.csv")}, out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--strategy", default="auto", choices=["auto", "ddp", "fsdp2"])
    p.add_argument("--devices", type=int, default=1)
    a = p.parse_args()
    train(a.out, a.strategy, a.devices)


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # all is written: skip the interpreter's teardown of torch and Lightning
