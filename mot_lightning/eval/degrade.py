"""Generic image degradations: what a tokenizer's reconstruction or a generated image does to a render.

The faithfulness scorer is trained on clean renders and on renders passed through these, so it reads
pictures that went through an image tokenizer (k-means patches, VQ-VAE, KL-VAE) or came out of a model,
without being fitted on any particular tokenizer. Each image of a batch gets one recipe drawn from a
seeded generator:

- ``clean``: unchanged;
- ``blur``: Gaussian blur, sigma in [0.4, 1.2] px;
- ``blocks``: 2x2 or 4x4 block averages (the look of patch codebooks);
- ``lowpass``: down to 1/2 or 1/4 of the side and back up (bilinear; VAE-like softness);

and then, on half of the images, colour noise: a per-channel gain (x0.9-1.1) and offset (+-0.05) and
per-pixel Gaussian noise (sigma up to 0.06). Shapes and dtypes: float[B, 3, R, R] in [0, 1] in and out.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur

RECIPES = ("clean", "blur", "blocks", "lowpass")


def degrade(images: Tensor, generator: torch.Generator) -> Tensor:
    """float[B, 3, R, R] -> float[B, 3, R, R]: each image through a random recipe (module doc)."""
    out = images.clone()
    recipe = torch.randint(len(RECIPES), (len(images),), generator=generator)  # (B,)
    for k, name in enumerate(RECIPES[1:], start=1):
        idx = (recipe == k).nonzero().flatten()
        if len(idx):
            out[idx] = _APPLY[name](images[idx], generator)
    noisy = (torch.rand(len(images), generator=generator) < 0.5).nonzero().flatten()
    if len(noisy):
        out[noisy] = colour_noise(out[noisy], generator)
    return out.clamp(0.0, 1.0)


def blur(images: Tensor, generator: torch.Generator) -> Tensor:
    sigma = float(torch.empty(1).uniform_(0.4, 1.2, generator=generator))
    return gaussian_blur(images, kernel_size=5, sigma=sigma)


def blocks(images: Tensor, generator: torch.Generator) -> Tensor:
    k = 2 if bool(torch.rand(1, generator=generator) < 0.5) else 4
    side = images.shape[-1]
    return F.interpolate(F.avg_pool2d(images, k), size=(side, side), mode="nearest")


def lowpass(images: Tensor, generator: torch.Generator) -> Tensor:
    k = 2 if bool(torch.rand(1, generator=generator) < 0.5) else 4
    side = images.shape[-1]
    small = F.interpolate(images, size=(side // k, side // k), mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(small, size=(side, side), mode="bilinear", align_corners=False)


def colour_noise(images: Tensor, generator: torch.Generator) -> Tensor:
    n = len(images)
    gain = torch.empty(n, 3, 1, 1).uniform_(0.9, 1.1, generator=generator)
    offset = torch.empty(n, 3, 1, 1).uniform_(-0.05, 0.05, generator=generator)
    sigma = torch.empty(n, 1, 1, 1).uniform_(0.0, 0.06, generator=generator)
    return images * gain + offset + sigma * torch.randn(images.shape, generator=generator)


_APPLY = {"blur": blur, "blocks": blocks, "lowpass": lowpass}
