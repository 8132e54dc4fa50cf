"""Train a tiny ``MultiModalLM`` with the research controls (warm start, freezing, tower multipliers, EMA) on
fixed token batches: in one process, or as the ranks of DDP / FSDP2 (started by torchrun, or relaunched by
Lightning once per rank).

    python -m tests.app.controls_run --strategy fsdp2 --devices 2 --steps 4 --out run.pt \
        --freeze '{"modalities": ["text"], "rows": ["embed", "head"], "until_step": 3}' --ema 0.9

Step ``s`` trains on ``token_batch(ROWS, seed=s % 2)`` (rank ``r`` of ``W`` takes its ``ROWS / W`` rows); a
resumed run restarts the loader's list, so one resumed at an even step sees what the unbroken run saw. The model
is built in float64, so strategies agree to float64 rounding. Every parameter (full tensors) and whether it has
optimizer state are recorded after each optimizer step; rank 0 writes them with the EMA averages to ``--out``.
``--save_at S`` writes the checkpoint ``--save`` right after optimizer step ``S`` while training goes on (as
``ModelCheckpoint`` does) and records the EMA averages it holds.

``Runs`` launches this module for the tests (the session fixture ``controls``): every set of arguments once per
test session, so the distributed tests share their runs; its processes are forked from ``tests/processes.py``'s
server (torch and Lightning imported once), several as the ranks torchrun would start.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
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
from tests.processes import Forked, start_module

ROWS, T, VOCAB = 4, 16, 40
LAYOUT = {"text": 13, "special": 7, "image": 10, "speech": 10}  # token_batch: ids 0-19 text, 20-29, 30-39
ROOT = Path(__file__).resolve().parents[2]

# The runs the distributed tests share: 4 steps with the text tower and the text rows of embed/head frozen
# until step 2, and an EMA. FSDP2 runs that others resume save at step 2 (an even step: see above).
FREEZE = {"modalities": ["text"], "rows": ["embed", "head"], "until_step": 2}
SHARED = ("--steps", "4", "--freeze", json.dumps(FREEZE), "--ema", "0.8")
ONE_PROCESS = SHARED
DDP = (*SHARED, "--strategy", "ddp", "--devices", "2")
FSDP2 = (*SHARED, "--strategy", "fsdp2", "--devices", "2", "--save_at", "2")
FSDP2_ONE_PROCESS = (*SHARED, "--strategy", "fsdp2", "--devices", "1", "--save_at", "2")


def resumed(ckpt: Path, devices: int) -> tuple[str, ...]:
    """The shared FSDP2 run on ``devices`` processes, resumed from the checkpoint ``ckpt`` of another."""
    return (*SHARED, "--strategy", "fsdp2", "--devices", str(devices), "--ckpt_path", str(ckpt))


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
        self.losses: dict[int, float] = {}  # optimizer step -> this rank's training loss

    def on_train_start(self, trainer, pl_module) -> None:
        self._record(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses[trainer.global_step] = float(outputs["loss"])
        self._record(trainer, pl_module)

    def _record(self, trainer, pl_module) -> None:
        step = trainer.global_step
        self.weights[step] = {n: full(p) for n, p in pl_module.named_parameters()}
        state = trainer.optimizers[0].state
        self.has_state[step] = {n: len(state.get(p, {})) > 0 for n, p in pl_module.named_parameters()}


class SaveAt(pl.Callback):
    """Writes a checkpoint right after optimizer step ``step`` while training goes on, with the EMA averages
    of that step (listed after the EMA callback; collective under FSDP2: every rank)."""

    def __init__(self, step: int, path: str, ema: EMA | None) -> None:
        self.step, self.path, self.ema = step, path, ema
        self.saved = False
        self.averages: dict[str, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and not self.saved:
            trainer.save_checkpoint(self.path)
            self.averages = self.ema.averages() if self.ema else {}
            self.saved = True


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
    p.add_argument("--backbone", type=json.loads, default={}, help="TransformerConfig fields, e.g. tower_init")
    p.add_argument("--sharded_init", type=json.loads, default=True, help="false: FSDP2 builds the whole model")
    p.add_argument("--ckpt_path", default=None)
    p.add_argument("--save", default=None, help="checkpoint written after training (FSDP2: a sharded directory)")
    p.add_argument("--save_at", type=int, default=None, help="write --save after this optimizer step instead")
    a = p.parse_args()
    pl.seed_everything(0)
    torch.set_default_dtype(torch.float64)  # configure_model builds the weights inside fit: strategies agree
    module = tiny_module(freeze=Freeze(**a.freeze) if a.freeze else None,  # to float64 rounding
                         init_from=WarmStart(**a.init_from) if a.init_from else None,
                         sharded_init=a.sharded_init, **a.backbone)
    snapshots = Snapshots()
    ema = EMA(decay=a.ema) if a.ema is not None else None
    save_at = SaveAt(a.save_at, a.save, ema) if a.save and a.save_at is not None else None
    callbacks = [snapshots, *(c for c in (ema, save_at) if c is not None)]
    trainer = fit(module, a.out.parent, a.steps, strategy_name=a.strategy, devices=a.devices,
                  ckpt_path=a.ckpt_path, callbacks=callbacks)
    if a.save and save_at is None:
        trainer.save_checkpoint(a.save)
    averages = ema.averages() if ema else {}  # collective under FSDP2: every rank
    if trainer.is_global_zero:
        saved_ema = {k: v.cpu() for k, v in save_at.averages.items()} if save_at else {}
        torch.save({"weights": snapshots.weights, "has_state": snapshots.has_state, "losses": snapshots.losses,
                    "ema": {k: v.cpu() for k, v in averages.items()}, "saved_ema": saved_ema}, a.out)


def launch_env() -> dict[str, str]:
    """This environment without any launcher's variables (a test session inside a SLURM job or torchrun must
    not leak them into the runs), one thread per process."""
    launcher = ("SLURM_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK", "LOCAL_WORLD_SIZE", "MASTER_",
                "TORCHELASTIC_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(launcher)}
    return {**env, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def devices_of(args: Sequence[str]) -> int:
    return int(args[list(args).index("--devices") + 1]) if "--devices" in args else 1


class Runs:
    """Launches of this module, each set of arguments once per test session: one process, or ``--devices``
    ranks with torchrun's variables (``tests.processes.start_module``). The runs one call names start
    together. A run with ``--save_at`` writes its checkpoint to the path in its result's ``"ckpt"``."""

    def __init__(self, root: Path) -> None:
        self.root, self.launched = root, 0
        self.results: dict[tuple[str, ...], dict] = {}

    def __call__(self, *runs: Sequence[str]) -> list[dict]:
        started = []
        try:
            for args in dict.fromkeys(tuple(r) for r in runs):
                if args not in self.results:
                    started.append((args, *self._start(args)))
            for args, out, ckpt, proc in started:
                output, _ = proc.communicate(timeout=600)
                assert proc.returncode == 0, output[-4000:]
                self.results[args] = {**torch.load(out), "ckpt": ckpt}
        finally:
            for *_, proc in started:
                if proc.poll() is None:
                    proc.kill()
        return [self.results[tuple(r)] for r in runs]

    def _start(self, args: tuple[str, ...]) -> tuple[Path, Path | None, Forked]:
        self.launched += 1
        out = self.root / f"run{self.launched}.pt"
        ckpt = out.with_suffix(".ckpt") if "--save_at" in args else None
        argv = [*args, "--out", str(out), *(["--save", str(ckpt)] if ckpt else [])]
        return out, ckpt, start_module("tests.app.controls_run", argv, devices_of(args), launch_env(), ROOT)


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # all is written: skip the interpreter's teardown of torch and Lightning (seconds per process)
