"""Attention masks, built once per batch from ids by small composable functions.

A *mask function* has FlexAttention's ``mask_mod`` signature
``(b, h, q_idx, kv_idx) -> bool`` (True = query may attend to key) and is
written with plain tensor indexing, so the same function

- broadcasts over index grids into a dense ``bool[B, 1, T, T]`` mask for
  ``scaled_dot_product_attention`` (CPU, and training anywhere), and
- becomes a FlexAttention ``BlockMask`` on CUDA.

The ids: ``doc_ids: long[B, T]`` (packed documents; padding gets its own id),
``span_ids: long[B, T]`` (>= 0 marks a bidirectional span such as one diffusion
image, -1 elsewhere). Every token may attend to itself, so no row is empty.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, and_masks, create_block_mask, or_masks

MaskMod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def causal(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
    return q_idx >= kv_idx


def full(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
    return q_idx >= 0  # broadcasts to True everywhere it is combined


def same_document(doc_ids: Tensor) -> MaskMod:
    def mask(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return doc_ids[b, q_idx] == doc_ids[b, kv_idx]

    return mask


def same_span(span_ids: Tensor) -> MaskMod:
    def mask(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        q_span = span_ids[b, q_idx]
        return (q_span >= 0) & (q_span == span_ids[b, kv_idx])

    return mask


def build_mask_mod(*, causal_: bool = True, doc_ids: Tensor | None = None,
                   span_ids: Tensor | None = None) -> MaskMod:
    """(causal OR same bidirectional span) AND same document."""
    base: MaskMod = causal if causal_ else full
    if span_ids is not None and causal_:
        base = or_masks(base, same_span(span_ids))
    if doc_ids is not None:
        base = and_masks(base, same_document(doc_ids))
    return base


def dense_mask(mask_mod: MaskMod, batch: int, seq_len: int, device: torch.device | str) -> Tensor:
    """Evaluate ``mask_mod`` on broadcast index grids: ``bool[B, 1, T, T]``."""
    b = torch.arange(batch, device=device).view(batch, 1, 1, 1)
    h = torch.zeros(1, 1, 1, 1, dtype=torch.long, device=device)
    q = torch.arange(seq_len, device=device).view(1, 1, seq_len, 1)
    kv = torch.arange(seq_len, device=device).view(1, 1, 1, seq_len)
    return mask_mod(b, h, q, kv).expand(batch, 1, seq_len, seq_len)


@dataclass(frozen=True)
class AttentionMask:
    """What every attention layer of one forward pass needs.

    Exactly one form is set: ``is_causal`` (plain causal SDPA, no tensor),
    ``dense`` (``bool[B, 1, T, T]`` for SDPA; True = may attend), or
    ``block_mask`` (FlexAttention).
    """

    is_causal: bool = False
    dense: Tensor | None = None
    block_mask: BlockMask | None = None

    @classmethod
    def build(cls, batch: int, seq_len: int, device: torch.device, *, backend: str, causal_: bool = True,
              doc_ids: Tensor | None = None, span_ids: Tensor | None = None) -> AttentionMask:
        if backend not in ("sdpa", "flex"):
            raise ValueError(f"attention backend must be 'sdpa' or 'flex', got {backend!r}")
        if doc_ids is None and span_ids is None and backend == "sdpa":
            return cls(is_causal=causal_) if causal_ else cls()
        mask_mod = build_mask_mod(causal_=causal_, doc_ids=doc_ids, span_ids=span_ids)
        if backend == "flex":
            block = create_block_mask(mask_mod, batch, None, seq_len, seq_len, device=device)
            return cls(block_mask=block)
        return cls(dense=dense_mask(mask_mod, batch, seq_len, device))
