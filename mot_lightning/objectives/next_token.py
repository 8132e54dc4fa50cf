"""Next-token loss per modality, with Chameleon's z-loss.

Per-token cross-entropy is computed once over the whole batch; the modality of
the *target* token decides which modality a position's loss belongs to. The
training loss is the token-weighted mean ``sum_t w[m_t] * ce_t / sum_t w[m_t]``
(with all weights 1 this is the plain mean over target tokens), plus
``z_loss * mean_t(logsumexp_t ** 2)`` (Chameleon used 1e-5), which keeps the
softmax normaliser near 1 and the logits from drifting.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mot_lightning.data.batch import IGNORE_INDEX


@dataclass
class ModalityLosses:
    loss: Tensor  # scalar training loss (weighted CE + z-loss)
    ce_sum: Tensor  # float[M]: summed CE of target tokens of each modality
    count: Tensor  # float[M]: number of target tokens of each modality
    z_loss: Tensor  # scalar (already multiplied by its coefficient)

    def per_modality(self) -> Tensor:
        """float[M] mean CE per modality (NaN where a modality has no target token)."""
        return self.ce_sum / self.count


def next_token_losses(logits: Tensor, targets: Tensor, target_modality: Tensor, weights: Tensor,
                      z_loss: float = 0.0) -> ModalityLosses:
    """logits: float[B, T, V]; targets, target_modality: long[B, T]; weights: float[M]."""
    V, M = logits.shape[-1], weights.shape[0]
    flat_logits = logits.reshape(-1, V).float()
    flat_targets = targets.reshape(-1)
    valid = flat_targets != IGNORE_INDEX
    ce = F.cross_entropy(flat_logits, flat_targets, ignore_index=IGNORE_INDEX, reduction="none")  # (N,)
    mod = target_modality.reshape(-1).clamp(0, M - 1)
    validf = valid.float()
    ce_sum = torch.zeros(M, device=ce.device).index_add_(0, mod, ce * validf)
    count = torch.zeros(M, device=ce.device).index_add_(0, mod, validf)
    token_w = weights.to(ce.device)[mod] * validf
    loss = (ce * token_w).sum() / token_w.sum().clamp_min(1e-8)
    z = flat_logits.new_zeros(())
    if z_loss:
        lse = torch.logsumexp(flat_logits, dim=-1)
        z = z_loss * (lse.pow(2) * validf).sum() / validf.sum().clamp_min(1.0)
    return ModalityLosses(loss=loss + z, ce_sum=ce_sum.detach(), count=count, z_loss=z.detach())
