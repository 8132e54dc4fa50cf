"""VQ-VAE image tokenizer (Chameleon setting): conv encoder -> EMA vector quantiser -> conv decoder.

The quantiser keeps its codebook as an exponential moving average of the encoder outputs
assigned to each code (no codebook gradient), initialises it from the first batch, and
restarts *dead* codes -- codes no encoder output chose during the last ``restart_every``
training steps -- at random encoder outputs of the current batch. Statistics are summed over
ranks under DDP so every rank keeps the same codebook.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mot_lightning.modality import Modality
from mot_lightning.tokenizers.autoencoder import ImageAutoencoderModule, train_autoencoder
from mot_lightning.tokenizers.base import DiscreteTokenizer, TokenizerFileError
from mot_lightning.tokenizers.files import config_from_payload, read_tokenizer_file, save_tokenizer_file
from mot_lightning.tokenizers.fitting import FitData, FittableTokenizer, TrainConfig
from mot_lightning.tokenizers.image_common import ImageBatchCodec, load_images, mean_psnr, to_float, usage
from mot_lightning.tokenizers.kmeans import nearest
from mot_lightning.tokenizers.nets import Decoder, Encoder


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class VectorQuantizerEMA(nn.Module):
    def __init__(self, codebook_size: int, dim: int, decay: float = 0.99, restart_every: int = 20,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.codebook_size, self.dim, self.decay = codebook_size, dim, decay
        self.restart_every, self.eps = restart_every, eps
        self.register_buffer("codebook", torch.randn(codebook_size, dim))  # (K, D)
        self.register_buffer("ema_count", torch.ones(codebook_size))  # (K,) EMA of assignments per step
        self.register_buffer("ema_sum", self.codebook.clone())  # (K, D) EMA of assigned vectors' sum
        self.register_buffer("window_usage", torch.zeros(codebook_size))  # (K,) assignments since last restart
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.restarts = 0  # dead codes restarted so far, not counting the init (not saved)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """float[B, D, h, w] -> (straight-through quantised float[B, D, h, w], ids long[B, h, w], commitment loss)."""
        B, D, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, D).float()  # (N, D), quantiser runs in fp32
        if self.training:
            self._train_update(flat.detach())
        ids = nearest(flat.detach(), self.codebook)  # (N,)
        q = self.codebook[ids]
        commit = F.mse_loss(flat, q)
        q = flat + (q - flat).detach()  # straight-through estimator
        return q.view(B, h, w, D).permute(0, 3, 1, 2).to(z.dtype), ids.view(B, h, w), commit

    @torch.no_grad()
    def _train_update(self, flat: torch.Tensor) -> None:
        if int(self.steps) == 0:  # data-dependent init: every code starts on an encoder output
            self._restart(torch.ones(self.codebook_size, dtype=torch.bool), flat)
            self.restarts = 0
        ids = nearest(flat, self.codebook)
        counts = torch.bincount(ids, minlength=self.codebook_size).float()  # (K,)
        sums = torch.zeros_like(self.ema_sum).index_add_(0, ids, flat)  # (K, D)
        if _distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (n + self.codebook_size * self.eps) * n  # Laplace smoothing
        self.codebook.copy_(self.ema_sum / smoothed[:, None])
        self.window_usage.add_(counts)
        self.steps.add_(1)
        if int(self.steps) % self.restart_every == 0:
            self._restart(self.window_usage == 0, flat)
            self.window_usage.zero_()

    def _restart(self, dead: torch.Tensor, flat: torch.Tensor) -> None:
        """Move ``dead`` codes onto random encoder outputs of this batch (rank 0's choice under DDP)."""
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        pick = torch.randint(flat.shape[0], (n_dead,), device=flat.device)
        noise = torch.randn(n_dead, self.dim, device=flat.device) * flat.std() * 0.01  # split duplicates
        new = flat[pick] + noise
        if _distributed():
            dist.broadcast(new, src=0)
        self.codebook[dead] = new
        self.ema_sum[dead] = new
        self.ema_count[dead] = 1.0
        self.restarts += n_dead


@dataclass
class VQVAEConfig:
    resolution: int = 64  # images are resized (shorter side) and centre-cropped to R x R
    downsample: int = 8  # tokens per image: (R / downsample)^2
    channels: int = 64  # base width; doubles per level up to 4x
    res_blocks: int = 1  # residual blocks per level
    codebook_size: int = 1024
    code_dim: int = 32  # a small code dim keeps codes easy to reach
    beta: float = 0.25  # commitment loss weight
    ema_decay: float = 0.99
    restart_every: int = 20  # steps between dead-code restarts

    def __post_init__(self) -> None:
        if self.resolution % self.downsample:
            raise ValueError(f"resolution {self.resolution} must be a multiple of downsample {self.downsample}")

    @property
    def tokens_per_image(self) -> int:
        return (self.resolution // self.downsample) ** 2


class VQVAE(ImageAutoencoderModule):
    """The VQ-VAE as a LightningModule: MSE reconstruction + beta * commitment; logs PSNR and codebook usage."""

    def __init__(self, config: VQVAEConfig | None = None, lr: float = 2e-3, weight_decay: float = 0.0,
                 warmup_steps: int = 50, max_steps: int = 2000) -> None:
        super().__init__(lr, weight_decay, warmup_steps, max_steps)
        self.config = c = config or VQVAEConfig()
        self.save_hyperparameters({"config": dataclasses.asdict(c), "lr": lr, "weight_decay": weight_decay,
                                   "warmup_steps": warmup_steps, "max_steps": max_steps})
        self.encoder = Encoder(c.code_dim, c.channels, c.downsample, c.res_blocks)
        self.quantizer = VectorQuantizerEMA(c.codebook_size, c.code_dim, c.ema_decay, c.restart_every)
        self.decoder = Decoder(c.code_dim, c.channels, c.downsample, c.res_blocks)
        self.register_buffer("_val_counts", torch.zeros(c.codebook_size), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        q, ids, commit = self.quantizer(self.encoder(x))  # (B, D, h, w), (B, h, w)
        return self.decoder(q), {"ids": ids, "commit": commit}

    def losses(self, x: torch.Tensor, recon: torch.Tensor, extras: dict[str, Any]) -> dict[str, torch.Tensor]:
        rec = F.mse_loss(recon.float(), x)
        probs = torch.bincount(extras["ids"].flatten(), minlength=self.config.codebook_size).float()
        probs = probs / probs.sum()
        perplexity = torch.exp(-(probs * (probs + 1e-10).log()).sum())
        return {"loss": rec + self.config.beta * extras["commit"], "recon_mse": rec, "commit": extras["commit"],
                "perplexity": perplexity}

    def on_validation_epoch_start(self) -> None:
        self._val_counts.zero_()

    def on_validation_batch_extras(self, extras: dict[str, Any]) -> None:
        self._val_counts += torch.bincount(extras["ids"].flatten(), minlength=self.config.codebook_size)

    def on_validation_epoch_end(self) -> None:
        counts = self.all_gather(self._val_counts).reshape(-1, self.config.codebook_size).sum(0)
        self.log("val/codebook_usage", counts.gt(0).float().mean(), prog_bar=True)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.log("train/codes_restarted", float(self.quantizer.restarts), on_step=True)

    @torch.no_grad()
    def encode_ids(self, x: torch.Tensor) -> torch.Tensor:
        """float[B, 3, R, R] in [-1, 1] -> long[B, h, w]."""
        return self.quantizer(self.encoder(x))[1]

    @torch.no_grad()
    def decode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """long[B, h, w] -> float[B, 3, R, R] in ~[-1, 1]."""
        return self.decoder(self.quantizer.codebook[ids].permute(0, 3, 1, 2))


class VQImageTokenizer(ImageBatchCodec, DiscreteTokenizer, FittableTokenizer):
    """Images <-> (R/downsample)^2 VQ-VAE codes (row-major)."""

    modality = Modality.IMAGE

    def __init__(self, config: VQVAEConfig | None = None) -> None:
        self.config = config or VQVAEConfig()
        self.model: VQVAE | None = None  # built by fit/load

    @property
    def is_fitted(self) -> bool:
        return self.model is not None

    @property
    def vocab_size(self) -> int:
        return self.config.codebook_size

    @property
    def device(self) -> torch.device:
        self._require_fitted()
        return self.model.quantizer.codebook.device

    def to(self, device: str | torch.device) -> VQImageTokenizer:
        self._require_fitted()
        self.model.to(device)
        return self

    def fit(self, data: FitData | Sequence[Any], train: TrainConfig | None = None) -> dict[str, float]:
        train = train or TrainConfig(run_name="vqvae")
        t0 = time.perf_counter()
        images, held = load_images(data, self.config.resolution)
        model = VQVAE(self.config, train.lr, train.weight_decay, train.warmup_steps, train.max_steps)
        train_autoencoder(model, images, held, train)
        self.model = model.cpu().eval()
        metrics = {"fit_seconds": time.perf_counter() - t0, "train_images": float(len(images)),
                   "codes_restarted": float(model.quantizer.restarts)}
        return metrics | self.evaluate(to_float(held)) if len(held) else metrics

    def evaluate(self, images: torch.Tensor, batch_size: int = 64) -> dict[str, float]:
        """float[B, 3, R, R] -> held-out PSNR and codebook usage."""
        ids = torch.cat([self.encode_batch(b) for b in images.split(batch_size)])
        recon = torch.cat([self.decode_batch(b) for b in ids.split(batch_size)])
        return {"psnr": mean_psnr(recon, images), "codebook_usage": usage(ids, self.vocab_size),
                "held_out_images": float(len(images))}

    def encode_batch(self, images: torch.Tensor) -> torch.Tensor:
        """float[B, 3, R, R] in [0, 1] -> long[B, n]."""
        self._require_fitted()
        return self.model.encode_ids(images.to(self.device) * 2 - 1).flatten(1).cpu()

    def decode_batch(self, ids: torch.Tensor) -> torch.Tensor:
        """long[B, n] -> float[B, 3, R, R] in [0, 1]."""
        self._require_fitted()
        n, side = self.config.tokens_per_image, self.config.resolution // self.config.downsample
        if ids.ndim != 2 or ids.shape[1] != n:
            raise ValueError(f"expected ids of shape [B, {n}], got {tuple(ids.shape)}")
        if ids.numel() and not (0 <= int(ids.min()) and int(ids.max()) < self.vocab_size):
            raise ValueError(f"image ids must lie in [0, {self.vocab_size})")
        x = self.model.decode_ids(ids.view(-1, side, side).to(self.device))
        return ((x.float() + 1) / 2).clamp(0, 1).cpu()

    def num_tokens(self, raw: Any = None) -> int:
        return self.config.tokens_per_image

    def save(self, path: str) -> None:
        self._require_fitted()
        save_tokenizer_file(path, "VQImageTokenizer", self.config, self.model.state_dict())

    @classmethod
    def load(cls, path: str) -> VQImageTokenizer:
        payload = read_tokenizer_file(path, "VQImageTokenizer")
        out = cls(config_from_payload(VQVAEConfig, payload, path))
        out.model = _load_weights(VQVAE(out.config), payload["state"], path).eval()
        return out


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: str) -> nn.Module:
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # missing/unexpected keys or shape mismatch
        raise TokenizerFileError(
            f"{path!r}: weights do not match the stored config ({str(err).splitlines()[0]}); the file is "
            f"damaged or from another version: refit with `mot tokenizer fit`"
        ) from err
    return model
