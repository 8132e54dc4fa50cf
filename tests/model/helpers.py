"""Helpers for backbone tests: interleaved modality layouts and weight copying."""
from __future__ import annotations

import torch

from mot_lightning.model import Transformer


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
