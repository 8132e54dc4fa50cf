"""A faithful re-implementation of the published MoT tutorial's routing, for benchmarking only.

The tutorial keeps one ``nn.Linear`` (and norm) per modality for every
projection and, inside *every* projection, selects each modality's tokens with
a boolean mask (``x[mask]``, a ``nonzero`` each time) and merges the results
by masked assignment into a new tensor. This module does exactly that with the
shape bug fixed (the published merge allocates the wrong shape) so it runs.
Weights are loaded from a ``mot_lightning`` Transformer so the two can be
checked for equal outputs before they are timed against each other.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mot_lightning.model import Transformer


class MaskRoutedLinear(nn.Module):
    def __init__(self, weights: Tensor) -> None:  # weights: (M, out, in)
        super().__init__()
        self.experts = nn.ModuleList(nn.Linear(w.shape[1], w.shape[0], bias=False) for w in weights)
        with torch.no_grad():
            for lin, w in zip(self.experts, weights):
                lin.weight.copy_(w)

    def forward(self, x: Tensor, masks: list[Tensor]) -> Tensor:
        outputs = [expert(x[mask]) for expert, mask in zip(self.experts, masks)]
        merged = x.new_empty(*x.shape[:-1], self.experts[0].out_features)
        for mask, out in zip(masks, outputs):
            merged[mask] = out
        return merged


class MaskRoutedRMSNorm(nn.Module):
    def __init__(self, weights: Tensor, eps: float) -> None:  # weights: (M, dim)
        super().__init__()
        self.norms = nn.ModuleList(nn.RMSNorm(w.shape[0], eps=eps) for w in weights)
        with torch.no_grad():
            for norm, w in zip(self.norms, weights):
                norm.weight.copy_(w)

    def forward(self, x: Tensor, masks: list[Tensor]) -> Tensor:
        merged = torch.empty_like(x)
        for norm, mask in zip(self.norms, masks):
            merged[mask] = norm(x[mask])
        return merged


def stacked(layer) -> Tensor:
    """An untied layer's per-tower weights as one (M, ...) tensor (a copy)."""
    return torch.stack([w.detach() for w in layer.weights])


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2).type_as(x)


class TutorialBlock(nn.Module):
    """Pre-norm block; separate W_Q, W_K, W_V per modality as in the tutorial."""

    def __init__(self, block, cfg) -> None:
        super().__init__()
        q_out, kv_out = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        wq, wk, wv = stacked(block.attn.wqkv).split([q_out, kv_out, kv_out], dim=1)
        w1, w3 = stacked(block.ffn.w13).split(cfg.ffn_hidden, dim=1)
        self.wq, self.wk, self.wv = MaskRoutedLinear(wq), MaskRoutedLinear(wk), MaskRoutedLinear(wv)
        self.wo = MaskRoutedLinear(stacked(block.attn.wo))
        self.w1, self.w3 = MaskRoutedLinear(w1), MaskRoutedLinear(w3)
        self.w2 = MaskRoutedLinear(stacked(block.ffn.w2))
        eps = cfg.norm_eps
        self.q_norm = MaskRoutedRMSNorm(stacked(block.attn.q_norm), eps)
        self.k_norm = MaskRoutedRMSNorm(stacked(block.attn.k_norm), eps)
        self.attn_norm = MaskRoutedRMSNorm(stacked(block.attn_norm), eps)
        self.ffn_norm = MaskRoutedRMSNorm(stacked(block.ffn_norm), eps)
        self.h, self.kv, self.hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim

    def forward(self, x: Tensor, masks: list[Tensor], cos: Tensor, sin: Tensor) -> Tensor:
        B, T, _ = x.shape
        a = self.attn_norm(x, masks)
        q = self.q_norm(self.wq(a, masks).view(B, T, self.h, self.hd), masks)
        k = self.k_norm(self.wk(a, masks).view(B, T, self.kv, self.hd), masks)
        v = self.wv(a, masks).view(B, T, self.kv, self.hd)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=True, enable_gqa=self.h != self.kv)
        h = x + self.wo(y.transpose(1, 2).reshape(B, T, -1), masks)
        f = self.ffn_norm(h, masks)
        return h + self.w2(F.silu(self.w1(f, masks)) * self.w3(f, masks), masks)


class TutorialTransformer(nn.Module):
    def __init__(self, reference: Transformer) -> None:
        super().__init__()
        cfg = reference.cfg
        if cfg.untied != {"attn", "ffn", "norm"} or not cfg.qk_norm or cfg.norm_layout != "pre":
            raise ValueError("the tutorial baseline mirrors a fully untied pre-norm MoT with QK-norm")
        self.n_modalities = cfg.n_modalities
        self.layers = nn.ModuleList(TutorialBlock(b, cfg) for b in reference.layers)
        self.norm = MaskRoutedRMSNorm(stacked(reference.norm), cfg.norm_eps)
        self.rope = reference.rope

    def forward(self, x: Tensor, modality: Tensor) -> Tensor:
        masks = [modality == m for m in range(self.n_modalities)]
        T = x.shape[1]
        cos, sin = self.rope(torch.arange(T, device=x.device).expand(x.shape[0], T))
        for layer in self.layers:
            x = layer(x, masks, cos, sin)
        return self.norm(x, masks)
