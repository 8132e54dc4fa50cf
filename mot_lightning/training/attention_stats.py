"""Who attends to whom: modality-by-modality attention shares and the largest QK logit per tower, from the
explicit attention probabilities of one batch (``model.attention.reference_attention``).

Shares (``modality_shares``), for query ``i`` of modality ``a``, head ``h`` and key modality ``b``:

- ``mass[i, h, b] = sum of p[i, h, j]`` over the keys ``j`` of modality ``b`` that ``i`` may attend to (what
  the causal, bidirectional-span and document masks allow); it sums to 1 over ``b``.
- ``n[i, b]``: how many keys of modality ``b`` query ``i`` may attend to.
- normalised share ``s[i, h, b] = (mass / n)[i, h, b] / sum_c (mass / n)[i, h, c]`` over the modalities with
  ``n > 0`` (0 elsewhere): attention *per allowed key* of each modality, so a query that sees 200 text keys
  and 10 image keys and attends uniformly gets 1/2 and 1/2, not 20/21 and 1/21. It also sums to 1 over ``b``.

Both are averaged over heads, then over the valid queries of modality ``a`` (padding left out): rows of the
``[query, key]`` matrices sum to 1. A key modality that no query of ``a`` may see gets exactly 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def modality_shares(probs: Tensor, allowed: Tensor, modality: Tensor, valid: Tensor,
                    n_modalities: int) -> tuple[Tensor, Tensor, Tensor]:
    """probs float[B, H, T, T], allowed bool[B, 1, T, T], modality long[B, T], valid bool[B, T] ->
    (normalised share float[M, M], mass float[M, M], queries per modality float[M]); a row whose modality has
    no valid query is NaN."""
    dtype = torch.promote_types(probs.dtype, torch.float32)
    keys = F.one_hot(modality, n_modalities).to(dtype)[:, None]  # (B, 1, T, M)
    mass = probs.to(dtype) @ keys  # (B, H, T, M)
    n_keys = allowed.to(dtype) @ keys  # (B, 1, T, M)
    density = torch.where(n_keys > 0, mass / n_keys.clamp_min(1), 0.0)
    share = density / density.sum(-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    queries = keys[:, 0] * valid[..., None].to(dtype)  # (B, T, M): one-hot of valid queries
    counts = queries.sum((0, 1))  # (M,)
    per = counts.where(counts > 0, float("nan"))[:, None]
    share_qk = torch.einsum("btq,btk->qk", queries, share.mean(1)) / per
    mass_qk = torch.einsum("btq,btk->qk", queries, mass.mean(1)) / per
    return share_qk, mass_qk, counts


def tower_logit_max(logits: Tensor, query_tower: Tensor, valid: Tensor, n_towers: int) -> Tensor:
    """logits float[B, H, T, T] pre-softmax (-inf where masked), query_tower long[B, T] -> float[n_towers]:
    the largest logit of any head over the valid queries of each tower (-inf for a tower without queries)."""
    per_query = logits.amax(dim=(1, 3))  # (B, T)
    out = per_query.new_full((n_towers,), float("-inf"))
    for k in range(n_towers):
        sel = valid & (query_tower == k)
        if sel.any():
            out[k] = per_query[sel].max()
    return out
