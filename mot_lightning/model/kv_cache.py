"""Key/value cache for autoregressive decoding (``Transformer.forward(..., cache=KVCache.empty(n_layers))``).

Each layer appends the keys and values of the new tokens *after* QK-norm and
RoPE, so a cached key is exactly the key the full forward would compute at
that position; new queries then attend causally over the cached keys plus the
new ones. Only the causal mask is supported (no packed documents, no
bidirectional spans): decoding runs one document at a time.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mot_lightning.model.masks import AttentionMask, causal


@dataclass
class LayerKV:
    """One layer's cache: keys and values of every token seen so far."""

    k: Tensor | None = None  # (B, KV, L, hd)
    v: Tensor | None = None  # (B, KV, L, hd)

    def extend(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append the new tokens' ``(B, KV, T_new, hd)`` keys/values; return all of them ``(B, KV, L + T_new, hd)``."""
        if self.k is not None:
            k, v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        self.k, self.v = k, v
        return k, v


@dataclass
class KVCache:
    layers: list[LayerKV]
    length: int = 0  # tokens already cached (the absolute index of the next new token)
    batch: int | None = None  # rows, fixed by the first forward

    @classmethod
    def empty(cls, n_layers: int) -> KVCache:
        return cls(layers=[LayerKV() for _ in range(n_layers)])

    def mask(self, new_tokens: int, device: torch.device) -> AttentionMask:
        """Causal mask of the new queries (absolute indices ``L..L+T_new-1``) against all ``L + T_new`` keys."""
        if new_tokens == 1:  # one new token sees every key: no mask at all
            return AttentionMask()
        q = torch.arange(self.length, self.length + new_tokens, device=device).view(1, 1, new_tokens, 1)
        kv = torch.arange(self.length + new_tokens, device=device).view(1, 1, 1, -1)
        return AttentionMask(dense=causal(None, None, q, kv))  # bool[1, 1, T_new, L + T_new]
