"""Next-token objective per modality, with Chameleon's z-loss.

Per-token cross-entropy is computed once over the whole batch; the modality of
the *target* token decides which modality a position's loss belongs to. The
training loss is the token-weighted mean ``sum_t w[m_t] * ce_t / sum_t w[m_t]``
(with all weights 1 this is the plain mean over target tokens), plus
``z_loss * mean_t(logsumexp_t ** 2)`` (Chameleon used 1e-5), which keeps the
softmax normaliser near 1 and the logits from drifting.

``context`` modalities are input only: the model reads their tokens but their targets are masked out of
everything (training loss, z-loss, logged and validation losses), so no ``<stage>/loss_<modality>`` tag
exists for them and ``val/loss`` pools the other modalities alone. A unimodal baseline that keeps
captions as context (``configs/unimodal/image_only.yaml``) sets ``context: [text]``. ``loss_weights`` is
different: a weight of 0 stops a modality's gradient but its loss is still measured and logged.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mot_lightning.data.batch import IGNORE_INDEX, MultiModalBatch
from mot_lightning.modality import Modality
from mot_lightning.model.lm import TokenLM
from mot_lightning.objectives.base import Objective, StepLosses, document_index, document_sums, per_document


@dataclass
class ModalityLosses:
    loss: Tensor  # scalar training loss (weighted CE + z-loss)
    ce_sum: Tensor  # float[M]: summed CE of target tokens of each modality
    count: Tensor  # float[M]: number of target tokens of each modality
    z_loss: Tensor  # scalar (already multiplied by its coefficient)
    token_ce: Tensor  # float[B, T]: detached CE of each position, 0 where there is no target


def next_token_losses(logits: Tensor, targets: Tensor, target_modality: Tensor, weights: Tensor,
                      z_loss: float = 0.0) -> ModalityLosses:
    """logits: float[B, T, V]; targets, target_modality: long[B, T]; weights: float[M]."""
    V, M = logits.shape[-1], weights.shape[0]
    flat_logits = logits.reshape(-1, V)  # (B*T, V), at least float32 (bf16 logits are upcast)
    flat_logits = flat_logits.float() if flat_logits.element_size() < 4 else flat_logits
    flat_targets = targets.reshape(-1)
    valid = flat_targets != IGNORE_INDEX
    ce = F.cross_entropy(flat_logits, flat_targets, ignore_index=IGNORE_INDEX, reduction="none")  # (N,)
    mod = target_modality.reshape(-1).clamp(0, M - 1)
    validf = valid.to(ce.dtype)
    ce_sum = torch.zeros(M, device=ce.device, dtype=ce.dtype).index_add_(0, mod, ce * validf)
    count = torch.zeros(M, device=ce.device, dtype=ce.dtype).index_add_(0, mod, validf)
    token_w = weights.to(ce.device)[mod] * validf
    loss = (ce * token_w).sum() / token_w.sum().clamp_min(1e-8)
    z = flat_logits.new_zeros(())
    if z_loss:
        lse = torch.logsumexp(flat_logits, dim=-1)
        z = z_loss * (lse.pow(2) * validf).sum() / validf.sum().clamp_min(1.0)
    return ModalityLosses(loss=loss + z, ce_sum=ce_sum.detach(), count=count, z_loss=z.detach(),
                          token_ce=torch.where(valid, ce, 0.0).detach().view(targets.shape))


class NextToken(Objective):
    """Every modality by next-token prediction over the joint vocabulary (Chameleon setting)."""

    def __init__(self, z_loss: float = 0.0, loss_weights: dict[str, float] | None = None,
                 context: list[str] | None = None) -> None:
        """
        Args:
            z_loss: coefficient of the squared log-normaliser (Chameleon: 1e-5; 0 = off).
            loss_weights: weight of each modality's target tokens in the training loss, e.g.
                ``{text: 1.0, image: 1.0}``; missing modalities weigh 1.
            context: modalities read as input only, never predicted: their targets are left out of the
                training and validation losses and no loss is logged for them (module doc).
        """
        if z_loss < 0:
            raise ValueError(f"model.objective.init_args.z_loss must be >= 0, got {z_loss}")
        self.z_loss, self.loss_weights = z_loss, dict(loss_weights or {})
        try:
            self.context = frozenset(Modality.parse(m) for m in (context or []))
        except ValueError as err:
            raise ValueError(f"model.objective.init_args.context: {err}") from None
        self.weights: Tensor | None = None  # float[M], set by ``setup``
        self.modalities: list[Modality] = []

    def setup(self, modalities: Sequence[Modality], latent_dim: int) -> None:
        if latent_dim > 0:
            raise ValueError(f"the data's image tokenizer gives continuous latents (latent_dim {latent_dim}):"
                             " set model.objective to mot_lightning.objectives.Transfusion (see "
                             "configs/transfusion/mot.yaml) or use a discrete image tokenizer")
        weights = {Modality.parse(k): float(v) for k, v in self.loss_weights.items()}
        unknown = [m for m in weights if m not in modalities]
        if unknown:
            raise ValueError("model.objective.init_args.loss_weights name modalities the model does not have:"
                             f" {[m.label for m in unknown]}; it has {[m.label for m in modalities]}")
        self.weights = torch.tensor([weights.get(m, 1.0) for m in modalities])  # float[M]
        self.modalities = list(modalities)
        unknown = sorted(m.label for m in self.context if m not in modalities)
        if unknown or (self.context and self.context >= set(modalities)):
            raise ValueError(f"model.objective.init_args.context {sorted(m.label for m in self.context)}: "
                             + (f"the model has no {unknown}" if unknown else "leaves no modality to predict")
                             + f"; it has {[m.label for m in modalities]}")

    def eval_groups(self) -> list[tuple[list[int], float]]:
        # val/loss: CE pooled over every predicted target token
        return [([int(m) for m in self.modalities if m not in self.context], 1.0)]

    def targets(self, batch: MultiModalBatch) -> Tensor:
        """long[B, T]: the batch's targets, ``IGNORE_INDEX`` where the target is of a ``context`` modality."""
        if not self.context:
            return batch.targets
        ids = torch.tensor([int(m) for m in self.context], device=batch.targets.device)
        return batch.targets.masked_fill(torch.isin(batch.target_modality(), ids), IGNORE_INDEX)

    def document_losses(self, out: ModalityLosses, batch: MultiModalBatch) -> tuple[Tensor, Tensor]:
        """(sums, counts) float[N, M]: the next-token CE and target count of each document and modality."""
        index, n = document_index(batch)
        modality = batch.target_modality().clamp(0, len(self.modalities) - 1)
        valid = (self.targets(batch) != IGNORE_INDEX).float()  # (B, T)
        M = len(self.modalities)
        return document_sums(out.token_ce, index, modality, n, M), document_sums(valid, index, modality, n, M)

    def token_losses(self, logits: Tensor, batch: MultiModalBatch) -> ModalityLosses:
        """Next-token losses of ``logits`` float[B, T, V] against the batch's targets."""
        if self.weights is None:
            raise RuntimeError("call setup(modalities, latent_dim) before loss (MultiModalLM does)")
        if self.weights.device != logits.device:  # moved once, not every step
            self.weights = self.weights.to(logits.device)
        return next_token_losses(logits, self.targets(batch), batch.target_modality(), self.weights, self.z_loss)

    def loss(self, net: TokenLM, batch: MultiModalBatch, *, stage: str, seed: int) -> StepLosses:
        if batch.has_latents:
            raise ValueError("the batch carries image latents but model.objective is NextToken: set it to "
                             "mot_lightning.objectives.Transfusion (configs/transfusion/mot.yaml)")
        logits = net(batch.tokens, batch.modality, positions=batch.positions, doc_ids=batch.doc_ids)
        out = self.token_losses(logits, batch)
        extras = {"z_loss": out.z_loss} if self.z_loss else {}
        doc_sums, doc_weights = None, None
        if per_document(stage, batch):  # validation; training batches of several sources
            doc_sums, doc_weights = self.document_losses(out, batch)
        return StepLosses(total=out.loss, values=out.ce_sum / out.count.clamp_min(1), weights=out.count,
                          extras=extras, doc_sums=doc_sums, doc_weights=doc_weights)
