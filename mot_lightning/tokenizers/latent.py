"""Continuous image latents (Transfusion setting): a small KL-VAE, latents patchified in and out.

encode: image -> encoder mean latent float[C, R/d, R/d] (no sampling) -> times ``latent_scale``
(1 / std of training latents, so diffusion sees unit-variance inputs) -> patchify
-> float[n_patches, C * p * p]. decode inverts each step.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mot_lightning.modality import Modality
from mot_lightning.tokenizers.autoencoder import ImageAutoencoderModule, train_autoencoder
from mot_lightning.tokenizers.base import ContinuousTokenizer
from mot_lightning.tokenizers.files import config_from_payload, read_tokenizer_file, save_tokenizer_file
from mot_lightning.tokenizers.fitting import FitData, FittableTokenizer, TrainConfig
from mot_lightning.tokenizers.image_common import ImageBatchCodec, load_images, mean_psnr, to_float
from mot_lightning.tokenizers.nets import Decoder, Encoder
from mot_lightning.tokenizers.patches import patchify, unpatchify
from mot_lightning.tokenizers.vqvae import _load_weights


@dataclass
class KLVAEConfig:
    resolution: int = 64  # images are resized (shorter side) and centre-cropped to R x R
    downsample: int = 8  # latent grid is R/d x R/d
    channels: int = 64
    res_blocks: int = 1
    latent_channels: int = 4
    patch_size: int = 2  # latent patch per position: latent_dim = latent_channels * patch_size^2
    kl_weight: float = 1e-5  # weight of the per-element KL term

    def __post_init__(self) -> None:
        if self.resolution % (self.downsample * self.patch_size):
            raise ValueError(f"resolution {self.resolution} must be a multiple of downsample * patch_size "
                             f"({self.downsample} * {self.patch_size})")

    @property
    def latent_side(self) -> int:
        return self.resolution // self.downsample

    @property
    def latent_dim(self) -> int:
        return self.latent_channels * self.patch_size**2

    @property
    def patches_per_image(self) -> int:
        return (self.latent_side // self.patch_size) ** 2


class KLVAE(ImageAutoencoderModule):
    """The KL-VAE as a LightningModule: MSE reconstruction + kl_weight * KL(q(z|x) || N(0, I))."""

    def __init__(self, config: KLVAEConfig | None = None, lr: float = 2e-3, weight_decay: float = 0.0,
                 warmup_steps: int = 50, max_steps: int = 2000) -> None:
        super().__init__(lr, weight_decay, warmup_steps, max_steps)
        self.config = c = config or KLVAEConfig()
        self.save_hyperparameters({"config": dataclasses.asdict(c), "lr": lr, "weight_decay": weight_decay,
                                   "warmup_steps": warmup_steps, "max_steps": max_steps})
        self.encoder = Encoder(2 * c.latent_channels, c.channels, c.downsample, c.res_blocks)
        self.decoder = Decoder(c.latent_channels, c.channels, c.downsample, c.res_blocks)
        self.register_buffer("latent_scale", torch.ones(()))

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float[B, 3, R, R] -> (mean, logvar), each float[B, C, R/d, R/d]."""
        mean, logvar = self.encoder(x).float().chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        mean, logvar = self.moments(x)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if self.training else mean
        return self.decoder(z), {"mean": mean, "logvar": logvar}

    def losses(self, x: torch.Tensor, recon: torch.Tensor, extras: dict[str, Any]) -> dict[str, torch.Tensor]:
        mean, logvar = extras["mean"], extras["logvar"]
        rec = F.mse_loss(recon.float(), x)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        return {"loss": rec + self.config.kl_weight * kl, "recon_mse": rec, "kl": kl}

    @torch.no_grad()
    def calibrate_scale(self, images: torch.Tensor, batch_size: int = 64) -> float:
        """Set ``latent_scale`` = 1 / std of the mean latents of uint8 ``images``."""
        means = [self.moments(b.to(self.device).float() / 127.5 - 1)[0] for b in images.split(batch_size)]
        self.latent_scale.fill_(1.0 / float(torch.cat(means).std().clamp(min=1e-6)))
        return float(self.latent_scale)


class LatentImageTokenizer(ImageBatchCodec, ContinuousTokenizer, FittableTokenizer):
    """Images <-> float[n_patches, latent_dim] KL-VAE latent patches (row-major)."""

    modality = Modality.IMAGE
    item_ndim = 2  # one image encodes to float[n_patches, latent_dim]

    def __init__(self, config: KLVAEConfig | None = None) -> None:
        self.config = config or KLVAEConfig()
        self.model: KLVAE | None = None  # built by fit/load

    @property
    def is_fitted(self) -> bool:
        return self.model is not None

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def device(self) -> torch.device:
        self._require_fitted()
        return self.model.latent_scale.device

    def to(self, device: str | torch.device) -> LatentImageTokenizer:
        self._require_fitted()
        self.model.to(device)
        return self

    def fit(self, data: FitData | Sequence[Any], train: TrainConfig | None = None) -> dict[str, float]:
        train = train or TrainConfig(run_name="klvae")
        t0 = time.perf_counter()
        images, held = load_images(data, self.config.resolution)
        model = KLVAE(self.config, train.lr, train.weight_decay, train.warmup_steps, train.max_steps)
        train_autoencoder(model, images, held, train)
        self.model = model.cpu().eval()
        scale = self.model.calibrate_scale(images)
        metrics = {"fit_seconds": time.perf_counter() - t0, "train_images": float(len(images)), "latent_scale": scale}
        return metrics | self.evaluate(to_float(held)) if len(held) else metrics

    def evaluate(self, images: torch.Tensor) -> dict[str, float]:
        """float[B, 3, R, R] -> reconstruction PSNR and the latent round-trip error
        |encode(decode(z)) - z| / |z| (relative L2, mean over images)."""
        z = self.encode_batch(images)
        recon = self.decode_batch(z)
        z2 = self.encode_batch(recon)
        rel = ((z2 - z).flatten(1).norm(dim=1) / z.flatten(1).norm(dim=1).clamp(min=1e-8)).mean()
        return {"psnr": mean_psnr(recon, images), "latent_roundtrip_rel_error": float(rel),
                "held_out_images": float(len(images))}

    @torch.no_grad()
    def encode_batch(self, images: torch.Tensor) -> torch.Tensor:
        """float[B, 3, R, R] in [0, 1] -> float[B, n_patches, latent_dim]."""
        self._require_fitted()
        mean, _ = self.model.moments(images.to(self.device) * 2 - 1)  # (B, C, h, w)
        return patchify(mean * self.model.latent_scale, self.config.patch_size).cpu()

    @torch.no_grad()
    def decode_batch(self, latents: torch.Tensor) -> torch.Tensor:
        """float[B, n_patches, latent_dim] -> float[B, 3, R, R] in [0, 1]."""
        self._require_fitted()
        c = self.config
        if latents.ndim != 3 or latents.shape[1:] != (c.patches_per_image, c.latent_dim):
            raise ValueError(f"expected latents of shape [B, {c.patches_per_image}, {c.latent_dim}], "
                             f"got {tuple(latents.shape)}")
        z = unpatchify(latents.float().to(self.device), c.patch_size, c.latent_channels, c.latent_side, c.latent_side)
        x = self.model.decoder(z / self.model.latent_scale)
        return ((x.float() + 1) / 2).clamp(0, 1).cpu()

    def num_tokens(self, raw: Any = None) -> int:
        return self.config.patches_per_image

    def save(self, path: str) -> None:
        self._require_fitted()
        save_tokenizer_file(path, "LatentImageTokenizer", self.config, self.model.state_dict())

    @classmethod
    def load(cls, path: str) -> LatentImageTokenizer:
        payload = read_tokenizer_file(path, "LatentImageTokenizer")
        out = cls(config_from_payload(KLVAEConfig, payload, path))
        out.model = _load_weights(KLVAE(out.config), payload["state"], path).eval()
        return out
