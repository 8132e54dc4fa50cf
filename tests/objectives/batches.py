"""Hand-made batches for objective and module tests: discrete tokens, or text with latent images; the
validation loss of one batch as validation computes it."""
from __future__ import annotations

import torch

from mot_lightning.data.batch import IGNORE_INDEX, MultiModalBatch
from mot_lightning.objectives import Objective, StepLosses
from mot_lightning.training import DocumentLosses

V, LAT, LATENT = 24, 4, 23  # latent batches: vocabulary, latent patch width, the latent placeholder id
IMAGE_A, IMAGE_B = slice(3, 7), slice(9, 12)  # two images per row: 4 and 3 patches


def token_batch(B: int = 2, T: int = 16, V: int = 40, seed: int = 0) -> MultiModalBatch:
    """Two documents per row of random ids: 0-19 text, 20-29 image, 30-39 speech."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (B, T), generator=g)
    modality = (tokens >= 20).long() + (tokens >= 30).long()
    doc_ids = torch.zeros(B, T, dtype=torch.long)
    doc_ids[:, T // 2:] = 1
    positions = torch.cat([torch.arange(T // 2), torch.arange(T - T // 2)]).expand(B, T).clone()
    targets = torch.roll(tokens, -1, dims=1)
    targets[:, T // 2 - 1] = IGNORE_INDEX  # documents end: no target across them
    targets[:, -1] = IGNORE_INDEX
    return MultiModalBatch(tokens=tokens, modality=modality, doc_ids=doc_ids, positions=positions,
                           targets=targets)


def latent_batch(B: int = 2, T: int = 16, second_image: bool = True, seed: int = 0) -> MultiModalBatch:
    """Rows ``t t t [4 patches] t t [3 patches] t t t t`` of text ids 0-19 and ``LAT``-wide latents (the last
    row's second image optional)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 20, (B, T), generator=g)
    span = torch.full((B, T), -1)
    span[:, IMAGE_A] = 0
    span[:, IMAGE_B] = 1
    if not second_image:
        span[-1, IMAGE_B] = -1
    tokens[span >= 0] = LATENT
    targets = torch.roll(tokens, -1, dims=1)
    targets[targets == LATENT] = IGNORE_INDEX  # patches are not predicted as tokens
    targets[:, -1] = IGNORE_INDEX
    latents = torch.randn(B, T, LAT, generator=g) * (span >= 0)[..., None]  # (B, T, LAT), zero off images
    return MultiModalBatch(tokens=tokens, modality=(span >= 0).long(), doc_ids=torch.zeros_like(tokens),
                           positions=torch.arange(T).expand(B, T).clone(), targets=targets, latents=latents,
                           span_ids=span)


def eval_loss(objective: Objective, out: StepLosses) -> torch.Tensor:
    """``val/loss`` of one validation batch (float32): its document sums combined by ``eval_groups``."""
    metric = DocumentLosses(out.doc_sums.shape[1])
    metric.update(out.doc_sums, out.doc_weights)
    return metric.compute().combined(objective.eval_groups())[0].float()
