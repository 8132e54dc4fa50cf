"""Helpers for backbone tests: interleaved modality layouts, weight copying, a planted attention leak."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mot_lightning.model import Transformer, attention
from mot_lightning.model.masks import AttentionMask
from mot_lightning.model.towers import parameter_places
from mot_lightning.model.untied import UntiedLinear, UntiedRMSNorm


def interleaved_modality(batch: int, seq_len: int, n_modalities: int, seed: int = 0) -> torch.Tensor:
    """long[B, T]: runs of text, image and speech of random lengths, like interleaved documents."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batch):
        row: list[int] = []
        while len(row) < seq_len:
            m = int(torch.randint(0, n_modalities, (1,), generator=g))
            run = int(torch.randint(1, 6, (1,), generator=g))
            row.extend([m] * run)
        rows.append(row[:seq_len])
    return torch.tensor(rows)


def params_by_slot(model: torch.nn.Module) -> dict[str, list[torch.nn.Parameter]]:
    """Every parameter of ``model`` grouped by its slot (``model/towers.py``): a tied weight alone, an untied
    layer's towers in tower order."""
    params = dict(model.named_parameters())
    out: dict[str, list] = {}
    for name, place in parameter_places(model).items():
        out.setdefault(place.slot, []).append(params[name])
    return out


def copy_dense_into_towers(dense: Transformer, mot: Transformer) -> None:
    """Give every tower of ``mot`` the dense model's weights (each tower's Parameter a copy of the tied one)."""
    dense_slots = params_by_slot(dense)
    with torch.no_grad():
        for slot, towers in params_by_slot(mot).items():
            (src,) = dense_slots[slot]
            for p in towers:
                assert src.shape == p.shape, slot
                p.copy_(src)


def weight_grads(layer: UntiedLinear | UntiedRMSNorm) -> torch.Tensor:
    """The towers' weight gradients stacked: (n_weights, ...) (a copy)."""
    return torch.stack([w.grad for w in layer.weights])


def attend_one_position_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plant a classic bug for causality tests to catch: every query also attends to the next position.

    Replaces ``attention.attend`` (restored by ``monkeypatch`` after the test) with one whose mask is the
    real one plus the first superdiagonal, for the plain-causal fast path and for id-built masks alike.
    """
    def leaky(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask) -> torch.Tensor:
        T = q.shape[2]  # q: (B, H, T, hd)
        ones = torch.ones(T, T, dtype=torch.bool, device=q.device)
        allowed = mask.dense if mask.dense is not None else ones.tril()  # (B, 1, T, T) or (T, T)
        next_key = ones.triu(1).tril(1)  # (T, T): query t sees key t + 1
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed | next_key,
                                              enable_gqa=q.shape[1] != k.shape[1])

    monkeypatch.setattr(attention, "attend", leaky)
