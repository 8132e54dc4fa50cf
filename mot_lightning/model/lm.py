"""``TokenLM``: shared token embedding -> backbone -> shared output head (one ``nn.Module``).

Embeddings and the head stay shared across modalities (the paper unties only
non-embedding weights). Kept as one module so FSDP2 can shard it as the root
and so its ``forward`` is what the LightningModule calls.

With ``latent_dim > 0`` (Transfusion setting) it also holds the continuous-image
ends: a latent input projection plus a timestep embedding (added at every
latent position in place of the token embedding) and a latent output head that
predicts, at each latent position, the diffusion target of that same patch
(noise for DDPM, velocity for flow matching). Like the token embedding and head
they are shared weights outside the backbone; the image positions they feed are
routed to the image tower inside it.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mot_lightning.model.accounting import Accounting, count_parameters, lm_accounting
from mot_lightning.model.config import TransformerConfig
from mot_lightning.model.kv_cache import KVCache
from mot_lightning.model.transformer import Transformer


class TimestepEmbedding(nn.Module):
    """Diffusion time -> float[..., dim]: sinusoidal features (DDPM's, of ``t``) then a 2-layer SiLU MLP.

    ``t`` is the discrete DDPM step (0..T-1) or flow-matching time scaled to the same range by the caller.
    """

    def __init__(self, dim: int, freq_dim: int = 256, max_period: float = 10_000.0) -> None:
        super().__init__()
        self.freq_dim, self.max_period = freq_dim, max_period
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        angles = t.float()[..., None] * freqs  # (..., half)
        features = torch.cat([angles.cos(), angles.sin()], dim=-1)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class TokenLM(nn.Module):
    def __init__(self, cfg: TransformerConfig, vocab_size: int, latent_dim: int = 0) -> None:
        super().__init__()
        # model/meta_init.py (constructor_parts) replays these draws in this order: change both together
        self.embed = nn.Embedding(vocab_size, cfg.dim)
        self.backbone = Transformer(cfg)
        self.head = nn.Linear(cfg.dim, vocab_size, bias=False)
        nn.init.normal_(self.embed.weight, std=cfg.init_std)
        nn.init.normal_(self.head.weight, std=cfg.init_std)
        self.latent_dim = latent_dim
        if latent_dim > 0:
            self.latent_in = nn.Linear(latent_dim, cfg.dim)
            self.time_embed = TimestepEmbedding(cfg.dim)
            self.latent_out = nn.Linear(cfg.dim, latent_dim)
            nn.init.zeros_(self.latent_out.weight)  # predicts 0 at first: the DDPM loss starts at 1
            nn.init.zeros_(self.latent_out.bias)

    def forward(self, tokens: Tensor, modality: Tensor, *, positions: Tensor | None = None,
                doc_ids: Tensor | None = None, span_ids: Tensor | None = None, latents: Tensor | None = None,
                timesteps: Tensor | None = None, cache: KVCache | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """tokens, modality: long[B, T] -> logits float[B, T, vocab_size].

        With ``latents`` (float[B, T, latent_dim], the *noised* patches) and ``timesteps``
        (float[B, T], each latent position's diffusion time), positions where
        ``span_ids >= 0`` take ``latent_in(latents) + time_embed(timesteps)`` as input and
        the call returns ``(logits, latent_pred float[B, T, latent_dim])``.
        With ``cache`` (decoding) ``tokens`` are only the new ones (see ``Transformer.forward``).
        """
        x = self.embed(tokens)
        if latents is not None:
            if self.latent_dim == 0:
                raise ValueError("this TokenLM has no latent projections (latent_dim=0)")
            if span_ids is None or timesteps is None:
                raise ValueError("latents need span_ids (which positions are latent) and timesteps")
            lat = self.latent_in(latents.to(x.dtype)) + self.time_embed(timesteps)  # (B, T, dim)
            x = torch.where((span_ids >= 0)[..., None], lat.to(x.dtype), x)
        h = self.backbone(x, modality, positions=positions, doc_ids=doc_ids, span_ids=span_ids, cache=cache)
        logits = self.head(h)
        if latents is None:
            return logits
        return logits, self.latent_out(h)

    def accounting(self, seq_len: int) -> Accounting:
        """Parameters and training FLOPs of everything this module trains, for rows of ``seq_len``."""
        embed = count_parameters(self.embed) + count_parameters(self.head)
        ends = ("latent_in", "time_embed", "latent_out") if self.latent_dim > 0 else ()
        latent = sum(count_parameters(getattr(self, name)) for name in ends)
        return lm_accounting(self.backbone.cfg, seq_len, self.head.out_features, embed, latent)
