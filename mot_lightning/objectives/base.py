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
    ``eval_total`` / ``eval_weight``: scalar logged as ``val/loss`` (the objective with unit modality
    weights and no z-loss) and the weight of this batch in its average over validation batches.
    ``extras``: named scalars logged in training as ``train/<name>`` (e.g. ``loss_lm``, ``z_loss``).
    """

    total: Tensor
    values: Tensor
    weights: Tensor
    eval_total: Tensor
    eval_weight: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)


class Objective:
    """Base class: ``setup`` once with the model's modalities, then ``loss`` every step."""

    def setup(self, modalities: Sequence[Modality], latent_dim: int) -> None:
        """Check the objective against the model (its modalities, and ``latent_dim`` > 0 when the data gives
        continuous image latents); raise ``ValueError`` naming the YAML key to fix."""
        raise NotImplementedError

    def loss(self, net: TokenLM, batch: MultiModalBatch, *, stage: str, seed: int) -> StepLosses:
        """Run ``net`` on ``batch`` and return its losses.

        ``stage``: "train", "val" or "test". ``seed`` fixes the step's randomness (diffusion noise and
        times): in training the module derives it from (run seed, optimizer step, batch index, rank), so a
        resumed run redraws exactly what the unbroken run drew; in validation it is the batch's position
        (dataloader and batch index) alone, so every run sees the same noise.
        """
        raise NotImplementedError
