"""Rotary position embedding: angles computed once per batch from ``positions``, applied per layer."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class RotaryEmbedding(nn.Module):
    """Produces ``(cos, sin)`` of shape ``(B, T, 1, head_dim // 2)`` for integer positions."""

    def __init__(self, head_dim: int, theta: float = 10_000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        angles = positions.float().unsqueeze(-1) * self.inv_freq  # (B, T, hd/2)
        return angles.cos().unsqueeze(2), angles.sin().unsqueeze(2)  # (B, T, 1, hd/2)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (2i, 2i+1) of ``x: (B, T, H, hd)`` by the position's angle."""
    # at least float32 (bf16 rotates in float32), never below the input's precision (float64 stays float64)
    wide = x.to(torch.promote_types(x.dtype, torch.float32))
    x1, x2 = wide.unflatten(-1, (-1, 2)).unbind(-1)  # (B, T, H, hd/2) each
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2).type_as(x)
