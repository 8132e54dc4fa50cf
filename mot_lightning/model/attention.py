"""Global self-attention with per-tower Q/K/V/O projections and QK-norm.

Each tower projects its own tokens (tower-sorted order), the projections go
back to sequence order, and one attention runs over the whole interleaved
sequence: the paper's "untied projections, global attention".
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.flex_attention import flex_attention

from mot_lightning.model.config import TransformerConfig
from mot_lightning.model.kv_cache import LayerKV
from mot_lightning.model.masks import AttentionMask
from mot_lightning.model.rope import apply_rotary
from mot_lightning.model.untied import Routing, UntiedBias, UntiedLinear, UntiedRMSNorm, scaled_std


@dataclass(frozen=True)
class BatchContext:
    """Everything a block needs that depends only on the batch's ids: built once per forward."""

    batch: int
    seq_len: int
    routing: Routing
    mask: AttentionMask
    cos: Tensor  # (B, T, 1, hd/2)
    sin: Tensor  # (B, T, 1, hd/2)
    kv: LayerKV | None = None  # decoding only: this layer's cache (set per layer by Transformer)


_compiled_flex = None


def _flex(q: Tensor, k: Tensor, v: Tensor, block_mask, enable_gqa: bool) -> Tensor:
    """FlexAttention, compiled: inside a compiled block as part of the block's graph, else once per process
    on CUDA; eager elsewhere (forward-only on CPU)."""
    global _compiled_flex
    if torch.compiler.is_compiling():
        return flex_attention(q, k, v, block_mask=block_mask, enable_gqa=enable_gqa)
    if q.is_cuda:
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention, dynamic=False)
        return _compiled_flex(q, k, v, block_mask=block_mask, enable_gqa=enable_gqa)
    return flex_attention(q, k, v, block_mask=block_mask, enable_gqa=enable_gqa)


def attend(q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask) -> Tensor:
    """q: (B, H, T, hd), k/v: (B, KV, T, hd) -> (B, H, T, hd)."""
    gqa = q.shape[1] != k.shape[1]
    if mask.block_mask is not None:
        return _flex(q, k, v, mask.block_mask, gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense, is_causal=mask.is_causal,
                                          enable_gqa=gqa)


def reference_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The explicit twin of ``attend``: q (B, H, T, hd), k/v (B, KV, T, hd), ``allowed`` bool[B, 1, T, T]
    (True = may attend) -> (y (B, H, T, hd), probs (B, H, T, T), logits (B, H, T, T) pre-softmax, -inf where
    masked). SDPA's scale ``1/sqrt(hd)``; grouped-query heads share their key/value head."""
    if q.shape[1] != k.shape[1]:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    dtype = torch.promote_types(q.dtype, torch.float32)  # float32 at least: bf16 runs get exact shares
    logits = (q.to(dtype) @ k.to(dtype).transpose(-2, -1)) / q.shape[-1] ** 0.5  # (B, H, T, T)
    logits = logits.masked_fill(~allowed, float("-inf"))
    probs = logits.softmax(dim=-1)
    return (probs @ v.to(dtype)).to(q.dtype), probs, logits


# (attention module, q (B, H, T, hd), k/v (B, KV, T, hd)) -> y (B, H, T, hd); see ``Attention.probe``
Probe = Callable[[nn.Module, Tensor, Tensor, Tensor], Tensor]


class Attention(nn.Module):
    # Set only by diagnostics (``callbacks/attention_maps.py``) around one no-grad forward: it replaces ``attend``
    # by an explicit softmax that records what it sees. Training never sets it, so its kernels are untouched.
    probe: Probe | None = None

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        n, copy, towers = cfg.towers_for("attn"), cfg.tower_init == "copy", cfg.tower_ids_for("attn")
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        q_out, kv_out = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        self.split_sizes = (q_out, kv_out, kv_out)
        self.wqkv = UntiedLinear(cfg.dim, q_out + 2 * kv_out, n, std=cfg.init_std, copy_towers=copy,
                                 tower_ids=towers)
        self.qkv_bias = UntiedBias(q_out + 2 * kv_out, n, towers) if cfg.qkv_bias else None
        self.wo = UntiedLinear(q_out, cfg.dim, n, std=scaled_std(cfg.init_std, cfg.n_layers), copy_towers=copy,
                               tower_ids=towers)
        self.q_norm = UntiedRMSNorm(cfg.head_dim, n, cfg.norm_eps, towers) if cfg.qk_norm else None
        self.k_norm = UntiedRMSNorm(cfg.head_dim, n, cfg.norm_eps, towers) if cfg.qk_norm else None

    def forward(self, x: Tensor, ctx: BatchContext) -> Tensor:
        """x: (N, dim) tower-sorted -> (N, dim) tower-sorted."""
        B, T, r = ctx.batch, ctx.seq_len, ctx.routing
        qkv = self.wqkv(x, r)
        if self.qkv_bias is not None:
            qkv = self.qkv_bias(qkv, r)
        q, k, v = qkv.split(self.split_sizes, dim=-1)
        q = q.unflatten(-1, (self.n_heads, self.head_dim))  # (N, H, hd)
        k = k.unflatten(-1, (self.n_kv_heads, self.head_dim))  # (N, KV, hd)
        if self.q_norm is not None:
            q, k = self.q_norm(q, r), self.k_norm(k, r)
        # back to sequence order for the one global attention
        q = r.to_sequence(q).view(B, T, self.n_heads, self.head_dim)
        k = r.to_sequence(k).view(B, T, self.n_kv_heads, self.head_dim)
        v = r.to_sequence(v).view(B, T, self.n_kv_heads, self.head_dim)
        q, k = apply_rotary(q, ctx.cos, ctx.sin), apply_rotary(k, ctx.cos, ctx.sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H|KV, T, hd)
        if ctx.kv is not None:  # decoding: the new queries also see every cached key/value
            k, v = ctx.kv.extend(k, v)  # (B, KV, L + T, hd)
        y = attend(q, k, v, ctx.mask) if self.probe is None else self.probe(self, q, k, v)  # (B, H, T, hd)
        y = y.transpose(1, 2).reshape(B * T, self.n_heads * self.head_dim)  # (N, H*hd) sequence order
        return self.wo(r.to_sorted(y), r)
