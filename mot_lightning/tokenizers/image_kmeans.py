"""Non-learned VQ image tokenizer: a k-means codebook over image patches, fitted in seconds.

One token per ``patch_size`` x ``patch_size`` RGB patch (row-major); decoding pastes each
code's mean patch back. For CPU demos and tests; the VQ-VAE (vqvae.py) is the real one.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mot_lightning.modality import Modality
from mot_lightning.tokenizers.base import DiscreteTokenizer
from mot_lightning.tokenizers.files import (
    config_from_payload,
    read_tokenizer_file,
    require_state,
    save_tokenizer_file,
)
from mot_lightning.tokenizers.fitting import FitData, FittableTokenizer, TrainConfig
from mot_lightning.tokenizers.image_common import ImageBatchCodec, load_images, mean_psnr, to_float, usage
from mot_lightning.tokenizers.kmeans import kmeans, nearest
from mot_lightning.tokenizers.patches import patchify, unpatchify


@dataclass
class KMeansImageConfig:
    resolution: int = 64  # images are resized (shorter side) and centre-cropped to R x R
    patch_size: int = 4  # one token per patch: (R / patch_size)^2 tokens per image
    codebook_size: int = 1024
    iters: int = 20  # Lloyd iterations (stops early when the error stops improving)
    max_patches: int = 200_000  # random patches used for fitting
    seed: int = 0

    def __post_init__(self) -> None:
        if self.resolution % self.patch_size:
            raise ValueError(f"resolution {self.resolution} must be a multiple of patch_size {self.patch_size}")

    @property
    def tokens_per_image(self) -> int:
        return (self.resolution // self.patch_size) ** 2


class KMeansImageTokenizer(ImageBatchCodec, DiscreteTokenizer, FittableTokenizer):
    modality = Modality.IMAGE

    def __init__(self, config: KMeansImageConfig | None = None) -> None:
        self.config = config or KMeansImageConfig()
        self.codebook: torch.Tensor | None = None  # float[K, 3 * p * p], set by fit/load

    @property
    def is_fitted(self) -> bool:
        return self.codebook is not None

    @property
    def vocab_size(self) -> int:
        return self.config.codebook_size

    def fit(self, data: FitData | Sequence[Any], train: TrainConfig | None = None) -> dict[str, float]:
        cfg = self.config
        t0 = time.perf_counter()
        images, held = load_images(data, cfg.resolution)  # uint8 (N, 3, R, R)
        patches = patchify(to_float(images), cfg.patch_size).flatten(0, 1)  # (N * n, 3 p p)
        g = torch.Generator().manual_seed(cfg.seed)
        if patches.shape[0] > cfg.max_patches:
            patches = patches[torch.randperm(patches.shape[0], generator=g)[: cfg.max_patches]]
        self.codebook = kmeans(patches, cfg.codebook_size, cfg.iters, cfg.seed, name="image k-means")
        metrics = {"fit_seconds": time.perf_counter() - t0, "train_images": float(len(images))}
        return metrics | self.evaluate(to_float(held)) if len(held) else metrics

    def evaluate(self, images: torch.Tensor) -> dict[str, float]:
        """float[B, 3, R, R] -> reconstruction PSNR and codebook usage."""
        ids = self.encode_batch(images)
        return {"psnr": mean_psnr(self.decode_batch(ids), images), "codebook_usage": usage(ids, self.vocab_size),
                "held_out_images": float(len(images))}

    def encode_batch(self, images: torch.Tensor) -> torch.Tensor:
        """float[B, 3, R, R] -> long[B, n]."""
        self._require_fitted()
        patches = patchify(images.float(), self.config.patch_size)  # (B, n, 3 p p)
        return nearest(patches.flatten(0, 1), self.codebook).view(images.shape[0], -1)

    def decode_batch(self, ids: torch.Tensor) -> torch.Tensor:
        """long[B, n] -> float[B, 3, R, R]."""
        self._require_fitted()
        r, p = self.config.resolution, self.config.patch_size
        if ids.ndim != 2 or ids.shape[1] != self.config.tokens_per_image:
            raise ValueError(f"expected ids of shape [B, {self.config.tokens_per_image}], got {tuple(ids.shape)}")
        if ids.numel() and not (0 <= int(ids.min()) and int(ids.max()) < self.vocab_size):
            raise ValueError(f"image ids must lie in [0, {self.vocab_size})")
        return unpatchify(self.codebook[ids], p, 3, r, r).clamp(0, 1)

    def num_tokens(self, raw: Any = None) -> int:
        return self.config.tokens_per_image

    def save(self, path: str) -> None:
        self._require_fitted()
        save_tokenizer_file(path, "KMeansImageTokenizer", self.config, {"codebook": self.codebook})

    @classmethod
    def load(cls, path: str) -> KMeansImageTokenizer:
        payload = read_tokenizer_file(path, "KMeansImageTokenizer")
        out = cls(config_from_payload(KMeansImageConfig, payload, path))
        out.codebook = require_state(payload, ["codebook"], path)["codebook"].float()
        return out
