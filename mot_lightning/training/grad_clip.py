"""Gradient clipping under every strategy, returning the total gradient norm before clipping.

Lightning clips through the precision plugin, and its FSDP1 plugin refuses norm clipping
(``gradient_clip_algorithm='norm' is currently not supported for FSDPPrecision``). The norm of
sharded gradients needs every shard, so the module (``MultiModalLM.configure_gradient_clipping``)
clips here instead:

- FSDP1 (the strategy's model is a ``FullyShardedDataParallel`` root): the root's ``clip_grad_norm_``,
  which all-reduces the squared norms of the flat shards.
- FSDP2 (``fully_shard``: parameters and gradients are DTensors) and DDP / one device:
  ``torch.nn.utils.get_total_norm``; on DTensors it returns a DTensor whose ``full_tensor()`` sums the
  shards' squares across ranks, and ``clip_grads_with_norm_`` scales every shard by the same factor.
  Under DDP the gradients are already averaged across ranks, so the local norm is the global one.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.distributed.tensor import DTensor


def clip_gradients(root: nn.Module, parameters: Iterable[Tensor], max_value: float | None,
                   algorithm: str | None = "norm") -> Tensor:
    """Clip the gradients of ``parameters`` and return their total 2-norm before clipping (float32 scalar,
    the same on every rank).

    ``root``: the module the strategy trains (an FSDP1 root clips through itself). ``algorithm``:
    "norm" (scale all gradients so their total 2-norm is at most ``max_value``) or "value" (clamp each
    element to ``[-max_value, max_value]``); ``max_value`` None: measure only.
    """
    params = [p for p in parameters if p.grad is not None]
    by_value = str(algorithm) == "value"
    if isinstance(root, FullyShardedDataParallel):
        norm = root.clip_grad_norm_(math.inf if max_value is None or by_value else max_value)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], norm_type=2.0)
        if max_value is not None and not by_value:
            torch.nn.utils.clip_grads_with_norm_(params, max_value, norm)  # a DTensor norm scales DTensors
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
    if max_value is not None and by_value:
        torch.nn.utils.clip_grad_value_(params, max_value)
    return norm.detach().float()
