"""Shared by the image tokenizers: loading training images and measuring reconstructions."""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch

from mot_lightning.tokenizers import fit_inputs
from mot_lightning.tokenizers.fitting import FitData
from mot_lightning.tokenizers.media import IMAGE_EXTS, prepare_image

log = logging.getLogger("mot_lightning.tokenizers")


def load_images(data: FitData | Sequence[Any], resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (train uint8[N, 3, R, R], held-out uint8[M, 3, R, R]), images resized and centre-cropped.

    Decoded images are cached in memory at the tokenizer's resolution, up to ``data.max_items`` of them
    (``data.max_items`` of ``mot tokenizer fit``, ``data.tokenizer_files.fit_items`` of a ``prepare_data``
    fit). An in-memory sequence of images is all used for training.
    """
    if not isinstance(data, FitData):
        return _stack([prepare_image(x, resolution) for x in data], resolution), _stack([], resolution)
    t0 = time.perf_counter()
    keyed = []
    items = fit_inputs.iter_items(data.path, IMAGE_EXTS, lambda s: prepare_image(s, resolution), data.max_items)
    for key, img in items:
        keyed.append((key, _to_uint8(img)))
        if len(keyed) % 2000 == 0:
            log.info("read %d images (%.0fs)", len(keyed), time.perf_counter() - t0)
    train, held = fit_inputs.split(keyed, data.held_out, data.seed)
    log.info("images: %d for fitting, %d held out, %dx%d", len(train), len(held), resolution, resolution)
    return torch.stack(train), _stack(held, resolution)


def _to_uint8(img: torch.Tensor) -> torch.Tensor:
    return (img * 255).round().to(torch.uint8)


def _stack(images: list[torch.Tensor], resolution: int) -> torch.Tensor:
    if not images:
        return torch.zeros(0, 3, resolution, resolution, dtype=torch.uint8)
    return torch.stack([_to_uint8(x) if torch.is_floating_point(x) else x for x in images])


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8[B, 3, R, R] -> float[B, 3, R, R] in [0, 1]."""
    return images.float() / 255.0


def mean_psnr(recon: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over images of per-image PSNR in dB (data range 1; torchmetrics' PSNR with dim=(1, 2, 3))."""
    mse = (recon.clamp(0, 1) - target).pow(2).flatten(1).mean(1).clamp(min=1e-10)  # (B,)
    return float((10 * torch.log10(1.0 / mse)).mean())


def usage(ids: torch.Tensor, vocab_size: int) -> float:
    """Fraction of the codebook that occurs in ``ids``."""
    return float(torch.bincount(ids.flatten(), minlength=vocab_size).gt(0).float().mean())


def as_batch(raw: Any, resolution: int) -> tuple[torch.Tensor, bool]:
    """One image (any form) or float[B, 3, R, R] -> (float[B, 3, R, R], was_single)."""
    if isinstance(raw, torch.Tensor) and raw.ndim == 4:
        if raw.shape[1:] != (3, resolution, resolution) or not torch.is_floating_point(raw):
            raise ValueError(f"a batch must be float[B, 3, {resolution}, {resolution}] in [0, 1], got "
                             f"{raw.dtype} {tuple(raw.shape)}; pass single images to have them converted")
        return raw, False
    return prepare_image(raw, resolution)[None], True


class ImageBatchCodec:
    """``encode``/``decode`` of an image tokenizer from its ``encode_batch``/``decode_batch``:
    one image in (any form), one encoding out; a float[B, 3, R, R] batch in, a batch out."""

    item_ndim = 1  # dims of one image's encoding: 1 for long[n] ids, 2 for float[n, latent_dim] latents

    def encode(self, raw: Any) -> torch.Tensor:
        batch, single = as_batch(raw, self.config.resolution)
        encoded = self.encode_batch(batch)
        return encoded[0] if single else encoded

    def decode(self, encoded: torch.Tensor) -> torch.Tensor:
        """One image's encoding -> float[3, R, R]; a batch of them -> float[B, 3, R, R]."""
        if encoded.ndim == self.item_ndim:
            return self.decode_batch(encoded[None])[0]
        return self.decode_batch(encoded)
