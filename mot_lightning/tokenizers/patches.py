"""Patchify / unpatchify square grids (row-major patch order, channels-then-pixels inside a patch)."""
from __future__ import annotations

import torch


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """float[B, C, H, W] -> float[B, (H/p)*(W/p), C*p*p]."""
    B, C, H, W = x.shape
    if H % p or W % p:
        raise ValueError(f"grid {H}x{W} is not divisible by patch size {p}")
    x = x.reshape(B, C, H // p, p, W // p, p)  # (B, C, h, p, w, p)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, h, w, C, p, p)
    return x.reshape(B, (H // p) * (W // p), C * p * p)


def unpatchify(patches: torch.Tensor, p: int, channels: int, height: int, width: int) -> torch.Tensor:
    """float[B, n, C*p*p] -> float[B, C, H, W] (inverse of ``patchify``)."""
    B, n, d = patches.shape
    h, w = height // p, width // p
    if n != h * w or d != channels * p * p:
        raise ValueError(
            f"expected {h * w} patches of width {channels * p * p} for a {channels}x{height}x{width} grid, "
            f"got {n} of width {d}"
        )
    x = patches.reshape(B, h, w, channels, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, h, p, w, p)
    return x.reshape(B, channels, height, width)
