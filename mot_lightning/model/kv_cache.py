"""Key/value cache for autoregressive decoding (``Transformer.forward(..., cache=KVCache.empty(n_layers))``).

Each layer appends the keys and values of the new tokens *after* QK-norm and
RoPE, so a cached key is exactly the key the full forward would compute at
that position; new queries then attend causally over the cached keys plus the
new ones. Only the causal mask is supported (no packed documents, no
bidirectional spans): each row holds one document. Rows may hold prompts of
different lengths left-padded to one width (``pad``: the padding columns of each
row): no query attends to a padding key (a padding query sees only itself, so no
attention row is empty) and RoPE positions restart after the padding, so every
row decodes as it would alone.
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
    pad: Tensor | None = None  # long[B]: left-padding columns of each row (None: no row is padded)

    @classmethod
    def empty(cls, n_layers: int, pad: Tensor | None = None) -> KVCache:
        """An empty cache; ``pad`` long[B] = the left-padding columns of each row of the prompt it will see."""
        if pad is not None:
            if pad.dim() != 1 or pad.dtype != torch.long or bool((pad < 0).any()):
                raise ValueError(f"pad must be long[B] >= 0 (padding columns per row), got {pad}")
            if not bool(pad.any()):
                pad = None  # nothing padded: the plain causal path
        return cls(layers=[LayerKV() for _ in range(n_layers)], pad=pad)

    def positions(self, new_tokens: int, device: torch.device) -> Tensor:
        """RoPE positions long[B or 1, T_new] of the new tokens: their absolute index minus the row's padding
        (padding itself sits at 0). Rotary scores depend only on relative positions, so the shift changes
        rounding only; it keeps each row at the positions training used."""
        index = torch.arange(self.length, self.length + new_tokens, device=device)[None]  # (1, T_new)
        if self.pad is None:
            return index
        return (index - self.pad.to(device)[:, None]).clamp(min=0)  # (B, T_new)

    def mask(self, new_tokens: int, device: torch.device) -> AttentionMask:
        """Causal mask of the new queries (absolute indices ``L..L+T_new-1``) against all ``L + T_new`` keys,
        without the padding keys (a padding query sees itself only)."""
        q = torch.arange(self.length, self.length + new_tokens, device=device).view(1, 1, new_tokens, 1)
        kv = torch.arange(self.length + new_tokens, device=device).view(1, 1, 1, -1)
        if self.pad is None:
            if new_tokens == 1:  # one new token sees every key: no mask at all
                return AttentionMask()
            return AttentionMask(dense=causal(None, None, q, kv))  # bool[1, 1, T_new, L + T_new]
        real = kv >= self.pad.to(device).view(-1, 1, 1, 1)  # (B, 1, 1, L + T_new)
        return AttentionMask(dense=(causal(None, None, q, kv) & real) | (q == kv))  # bool[B, 1, T_new, L + T_new]
