"""Helpers for backbone tests: interleaved modality layouts, weight copying, a planted attention leak."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mot_lightning.model import Transformer, attention
from mot_lightning.model.masks import AttentionMask


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


def copy_dense_into_towers(dense: Transformer, mot: Transformer) -> None:
    """Give every tower of ``mot`` the dense model's weights (shapes (1, ...) -> (K, ...))."""
    dense_params = dict(dense.named_parameters())
    with torch.no_grad():
        for name, p in mot.named_parameters():
            src = dense_params[name]
            assert src.shape[1:] == p.shape[1:], name
            p.copy_(src.expand_as(p))


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
