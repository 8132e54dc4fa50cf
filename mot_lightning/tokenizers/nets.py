"""Convolutional encoder/decoder shared by the VQ-VAE and the KL-VAE (small, VQGAN-shaped, no attention).

Encoder: conv stem, then per 2x downsampling level ``res_blocks`` residual blocks and a
stride-2 conv (channels grow x2 per level, capped at x4), then a 1x1 projection.
Decoder mirrors it with nearest-neighbour upsampling. Images enter in [-1, 1].
"""
from __future__ import annotations

import itertools
import math

import torch
from torch import nn


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, ch), ch)


def level_channels(channels: int, downsample: int) -> list[int]:
    """Channel width of each resolution level, from full resolution down."""
    levels = int(math.log2(downsample))
    if 2**levels != downsample or downsample < 1:
        raise ValueError(f"downsample must be a power of two (1, 2, 4, 8, 16 ...), got {downsample}")
    return [channels * min(2**i, 4) for i in range(levels + 1)]


class ResBlock(nn.Module):
    def __init__(self, ch_in: int, ch_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(ch_in), nn.SiLU(), nn.Conv2d(ch_in, ch_out, 3, padding=1),
            _norm(ch_out), nn.SiLU(), nn.Conv2d(ch_out, ch_out, 3, padding=1),
        )
        self.skip = nn.Identity() if ch_in == ch_out else nn.Conv2d(ch_in, ch_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class Encoder(nn.Module):
    """float[B, 3, R, R] -> float[B, out_ch, R/d, R/d]."""

    def __init__(self, out_ch: int, channels: int = 64, downsample: int = 8, res_blocks: int = 1) -> None:
        super().__init__()
        chs = level_channels(channels, downsample)
        layers: list[nn.Module] = [nn.Conv2d(3, chs[0], 3, padding=1)]
        for c_in, c_out in itertools.pairwise(chs):
            layers += [ResBlock(c_in, c_in) for _ in range(res_blocks)]
            layers.append(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1))
        layers += [ResBlock(chs[-1], chs[-1]), _norm(chs[-1]), nn.SiLU(), nn.Conv2d(chs[-1], out_ch, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """float[B, in_ch, R/d, R/d] -> float[B, 3, R, R] (unbounded; ~[-1, 1] after training)."""

    def __init__(self, in_ch: int, channels: int = 64, downsample: int = 8, res_blocks: int = 1) -> None:
        super().__init__()
        chs = level_channels(channels, downsample)[::-1]
        layers: list[nn.Module] = [nn.Conv2d(in_ch, chs[0], 3, padding=1), ResBlock(chs[0], chs[0])]
        for c_in, c_out in itertools.pairwise(chs):
            layers += [ResBlock(c_in, c_in) for _ in range(res_blocks)]
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1)]
        layers += [_norm(chs[-1]), nn.SiLU(), nn.Conv2d(chs[-1], 3, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
