"""The golden-curve runs: ``configs/model/tiny.yaml`` as an MoT, trained in-process by Lightning for a few
dozen optimizer steps on fixed synthetic batches, returning the per-modality loss trajectories of two
settings: ``next_token`` (text, image and speech ids, the ``NextToken`` objective) and ``transfusion``
(text ids and continuous image latents, the ``Transfusion`` objective with DDPM).

Regenerate the committed curve (only after a change that is *meant* to move training, and say why in
the commit message):

    OMP_NUM_THREADS=1 python -m tests.app.golden_curve --write

The batches are learnable without a data layer: each document is a text segment (ids 0-15) that is an
arithmetic progression modulo 16 with a stride of 1, 2 or 3, followed by an image or speech segment that
depends on the stride: for ``next_token`` a progression with the same stride in the image (16-31) or
speech (32-47) range; for ``transfusion`` 10 latent patches drawn around a pattern of the stride. So every
modality's loss falls, and attention must carry the stride across the modality boundary. Everything the
curves pass through is the app's own code: ``MultiModalLM``, the objective, ``TokenLM`` and the backbone,
AdamW over the module's parameter groups, ``WarmupCosine``, gradient clipping, the logged
``train/loss_<modality>`` and ``val/loss_<modality>`` tags.
"""
from __future__ import annotations

import argparse
import json
import os
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import torch
import yaml
from torch.utils.data import DataLoader

from mot_lightning.data.batch import IGNORE_INDEX, MultiModalBatch
from mot_lightning.lit_module import MultiModalLM
from mot_lightning.model import TransformerConfig
from mot_lightning.objectives import NextToken, Objective, Transfusion
from mot_lightning.schedules import WarmupCosine

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "tiny_mot_curves.json"
ROWS, T, VOCAB, SEGMENT = 8, 32, 48, 16  # batch rows, seq_len, joint vocabulary, ids per modality
STEPS, N_BATCHES, VAL_EVERY = 60, 8, 20  # optimizer steps, distinct training batches (cycled), val interval
LATENT_ID, LATENT_DIM = SEGMENT, 4  # transfusion: the image placeholder id (vocabulary 0-16), patch width
SETTINGS = {"next_token": ("text", "image", "speech"), "transfusion": ("text", "image")}


def backbone_config(setting: str, **overrides) -> TransformerConfig:
    """``configs/model/tiny.yaml``'s backbone as an MoT over the setting's modalities (``overrides`` make the
    deliberate changes)."""
    tiny = yaml.safe_load((ROOT / "configs/model/tiny.yaml").read_text())["model"]["backbone"]
    return TransformerConfig(**{**tiny, "n_modalities": len(SETTINGS[setting]), "sparsity": "mot", **overrides})


def _segment(g: torch.Generator, modality: int, stride: int, length: int) -> torch.Tensor:
    start = int(torch.randint(0, SEGMENT, (1,), generator=g))
    return modality * SEGMENT + (start + stride * torch.arange(length)) % SEGMENT  # (length,)


def golden_batch(setting: str, seed: int) -> MultiModalBatch:
    """``ROWS`` rows of two documents of ``T / 2`` positions: 6 text ids, then 10 image or speech ids
    (``next_token``) or 10 latent image patches (``transfusion``)."""
    g = torch.Generator().manual_seed(seed)
    docs, latents = [], []
    n_text, n_other = 6, T // 2 - 6
    for _ in range(2 * ROWS):
        stride = int(torch.randint(1, 4, (1,), generator=g))
        other = int(torch.randint(1, 3, (1,), generator=g))
        if setting == "next_token":
            docs.append(torch.cat([_segment(g, 0, stride, n_text), _segment(g, other, stride, n_other)]))
            continue
        docs.append(torch.cat([_segment(g, 0, stride, n_text), torch.full((n_other,), LATENT_ID)]))
        pattern = torch.cos(stride * torch.arange(n_other * LATENT_DIM).view(n_other, LATENT_DIM) / 4)
        noise = 0.1 * torch.randn(n_other, LATENT_DIM, generator=g)
        latents.append(torch.cat([torch.zeros(n_text, LATENT_DIM), pattern + noise]))  # (T / 2, LATENT_DIM)
    tokens = torch.stack(docs).view(ROWS, T)  # (B, T): two documents per row
    doc_ids = (torch.arange(T) >= T // 2).long().expand(ROWS, T).clone()
    positions = (torch.arange(T) % (T // 2)).expand(ROWS, T).clone()
    targets = torch.roll(tokens, -1, dims=1)
    targets[:, T // 2 - 1] = IGNORE_INDEX  # no target across documents
    targets[:, -1] = IGNORE_INDEX
    if setting == "next_token":
        return MultiModalBatch(tokens=tokens, modality=tokens // SEGMENT, doc_ids=doc_ids, positions=positions,
                               targets=targets)
    image = tokens == LATENT_ID
    targets[targets == LATENT_ID] = IGNORE_INDEX  # patches are not next-token targets
    span_ids = torch.where(image, doc_ids, -1)  # one image per document
    return MultiModalBatch(tokens=tokens, modality=image.long(), doc_ids=doc_ids, positions=positions,
                           targets=targets, latents=torch.stack(latents).view(ROWS, T, LATENT_DIM),
                           span_ids=span_ids)


class GoldenData(pl.LightningDataModule):
    def __init__(self, setting: str) -> None:
        super().__init__()
        self.setting = setting

    def train_dataloader(self) -> DataLoader:
        return DataLoader([golden_batch(self.setting, s) for s in range(N_BATCHES)], batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader([golden_batch(self.setting, 1000)], batch_size=None)


class Record(pl.Callback):
    """The logged per-modality losses: training at every step, validation at every validation."""

    def __init__(self, labels: tuple[str, ...]) -> None:
        self.labels, self.curve = labels, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        for label in self.labels:
            self.curve.setdefault(f"train/loss_{label}", []).append(
                float(trainer.callback_metrics[f"train/loss_{label}"]))

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        for label in self.labels:
            self.curve.setdefault(f"val/loss_{label}", []).append(float(trainer.callback_metrics[f"val/loss_{label}"]))


def run(setting: str = "next_token", **backbone_overrides) -> dict[str, list[float]]:
    """Train and return ``{tag: [value per step or per validation]}``; float32, the app's CPU precision."""
    pl.seed_everything(0, verbose=False)
    transfusion = setting == "transfusion"
    objective: Objective = Transfusion(num_steps=100) if transfusion else NextToken()
    model = MultiModalLM(backbone=backbone_config(setting, **backbone_overrides), objective=objective,
                         vocab_size=LATENT_ID + 1 if transfusion else VOCAB,
                         latent_dim=LATENT_DIM if transfusion else 0,
                         optimizer=partial(torch.optim.AdamW, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1),
                         scheduler=partial(WarmupCosine, warmup_steps=5, max_steps=STEPS))
    record = Record(SETTINGS[setting])
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=STEPS, gradient_clip_val=1.0,
                         val_check_interval=VAL_EVERY, check_val_every_n_epoch=None, num_sanity_val_steps=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[record])
    trainer.fit(model, datamodule=GoldenData(setting))
    return record.curve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help=f"write the curve to {GOLDEN.relative_to(ROOT)}")
    a = p.parse_args()
    curves = {setting: {k: [round(v, 8) for v in vs] for k, vs in run(setting).items()} for setting in SETTINGS}
    text = json.dumps({"regen": "OMP_NUM_THREADS=1 python -m tests.app.golden_curve --write",
                       "torch": torch.__version__, "threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0),
                       "curves": curves}, indent=1)
    if a.write:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
