"""The objective interface: what one training or validation step of a ``TokenLM`` optimises.

An objective is chosen in YAML (``model.objective: {class_path: ..., init_args: ...}``) and owns
everything between a batch and its losses: which inputs the network sees (clean tokens, noised
latents and their times), the targets, and how per-modality losses combine into the scalar to
backprop. The LightningModule only calls ``loss`` and logs what comes back, so a new objective is
a new class here, not new branches there.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mot_lightning.data.batch import MultiModalBatch
from mot_lightning.modality import Modality
from mot_lightning.model.lm import TokenLM

STAGES = ("train", "val", "test")


@dataclass
class StepLosses:
    """The losses of one step.

    ``total``: scalar to backprop (without the MoE load-balancing loss, which the module adds);
    logged as ``train/loss``.
    ``values`` / ``weights``: float[M] loss of each modality and what it averages over (target tokens;
    latent positions for diffusion images); logged as ``<stage>/loss_<modality>`` where the weight is > 0.
    ``extras``: named scalars logged in training as ``train/<name>`` (e.g. ``loss_lm``, ``z_loss``).
    ``doc_sums`` / ``doc_weights`` (where ``per_document``: validation and test, and training batches that
    carry ``source_ids``; else ``None``): float[N, M], the same sums split by document (``document_index``):
    ``values[m] == doc_sums[:, m].sum() / weights[m]`` and ``weights == doc_weights.sum(0)``. Validation
    turns them into each loss and its standard error over documents (``eval_losses.py``), training into
    losses per source (``training/source_losses.py``); rows of padding hold zeros (detached).
    ``latent_err`` / ``noise_level`` (diffusion objectives, where ``per_document``; else ``None``): float[B, T],
    the squared error per latent element at each latent position (0 elsewhere; its sum over the latent
    positions / their count is ``values[image]``) and each position's diffusion time as a fraction of the
    schedule in [0, 1) (0 = clean); what the loss by noise level bins (``training/noise_bins.py``).
    """

    total: Tensor
    values: Tensor
    weights: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)
    doc_sums: Tensor | None = None
    doc_weights: Tensor | None = None
    latent_err: Tensor | None = None
    noise_level: Tensor | None = None


def per_document(stage: str, batch: MultiModalBatch) -> bool:
    """Whether a step's ``StepLosses`` hold ``doc_sums``: in validation and test, and in training when the
    batch carries ``source_ids`` (several training sources: losses per source)."""
    return stage != "train" or batch.source_ids is not None


def document_index(batch: MultiModalBatch) -> tuple[Tensor, int]:
    """Which document of the batch each position belongs to: long[B, T] ``row * D + doc_id`` (``D`` = the
    largest document count of a row, padding included), and the number of indices ``B * D``."""
    D = int(batch.doc_ids.max()) + 1
    rows = torch.arange(batch.batch_size, device=batch.doc_ids.device)[:, None]  # (B, 1)
    return batch.doc_ids + rows * D, batch.batch_size * D


def document_sums(values: Tensor, index: Tensor, modality: Tensor, n_docs: int, n_modalities: int) -> Tensor:
    """float[n_docs, M]: ``values`` (float[B, T], zero where nothing counts) summed per (document, modality);
    ``index`` from ``document_index``, ``modality`` long[B, T] the modality each value belongs to."""
    flat = (index * n_modalities + modality).reshape(-1)  # (B*T,) cell of each position
    out = values.new_zeros(n_docs * n_modalities, dtype=torch.float32)
    return out.index_add_(0, flat, values.reshape(-1).float()).view(n_docs, n_modalities)


class Objective:
    """Base class: ``setup`` once with the model's modalities, then ``loss`` every step."""

    def setup(self, modalities: Sequence[Modality], latent_dim: int) -> None:
        """Check the objective against the model (its modalities, and ``latent_dim`` > 0 when the data gives
        continuous image latents); raise ``ValueError`` naming the YAML key to fix."""
        raise NotImplementedError

    def eval_groups(self) -> list[tuple[list[int], float]]:
        """How ``val/loss`` combines the modalities: ``sum_g coef_g * (loss pooled over the targets of group
        g's modality ids)``, i.e. the objective with unit weights inside a group and no z-loss."""
        raise NotImplementedError

    def loss(self, net: TokenLM, batch: MultiModalBatch, *, stage: str, seed: int) -> StepLosses:
        """Run ``net`` on ``batch`` and return its losses.

        ``stage``: "train", "val" or "test". ``seed`` fixes the step's randomness (diffusion noise and
        times): in training the module derives it from (run seed, optimizer step, batch index, rank), so a
        resumed run redraws exactly what the unbroken run drew; in validation it is the batch's position
        (dataloader and batch index) alone, so every run sees the same noise.
        """
        raise NotImplementedError
