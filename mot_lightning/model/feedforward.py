"""SwiGLU feed-forward, untied per tower when ``"ffn"`` is in ``cfg.untied``; MoE and hybrid variants.

``make_feedforward`` picks one of three small classes from the config:
``FeedForward`` (dense / MoT), ``MoEFeedForward`` (``sparsity="moe"``, see
``moe.py``) and ``HybridFeedForward`` (MoT whose ``moe_towers`` use an MoE).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mot_lightning.model.config import TransformerConfig
from mot_lightning.model.moe import MoEFeedForward
from mot_lightning.model.untied import Routing, UntiedLinear, scaled_std


class FeedForward(nn.Module):
    def __init__(self, cfg: TransformerConfig, towers: list[int] | None = None) -> None:
        """``towers``: the towers whose weights this holds (a hybrid's plain towers); default: all when
        the FFN is untied, else one tied weight."""
        super().__init__()
        towers = cfg.tower_ids_for("ffn") if towers is None else towers
        n, copy = len(towers) if towers is not None else 1, cfg.tower_init == "copy"
        self.hidden = cfg.ffn_hidden
        # gate and up projections fused into one matmul per tower
        self.w13 = UntiedLinear(cfg.dim, 2 * cfg.ffn_hidden, n, std=cfg.init_std, copy_towers=copy,
                                tower_ids=towers)
        self.w2 = UntiedLinear(cfg.ffn_hidden, cfg.dim, n, std=scaled_std(cfg.init_std, cfg.n_layers),
                               copy_towers=copy, tower_ids=towers)

    def forward(self, x: Tensor, routing: Routing) -> Tensor:
        gate, up = self.w13(x, routing).split(self.hidden, dim=-1)  # (N, hidden) each
        return self.w2(F.silu(gate) * up, routing)


class HybridFeedForward(nn.Module):
    """Hybrid MoT+MoE: towers in ``cfg.moe_towers`` run an MoE on their own tokens only;
    the other ("plain") towers are an ordinary untied ``FeedForward`` holding only their weights
    (``plain.w13.weights[i]`` is tower ``plain_towers[i]``, its ``tower_ids[i]``); ``moe[j]`` is tower
    ``moe_towers[j]`` (``tower_of_module``)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.moe_towers = list(cfg.moe_towers)
        self.plain_towers = [k for k in range(cfg.n_towers) if k not in self.moe_towers]
        self.plain = FeedForward(cfg, towers=self.plain_towers) if self.plain_towers else None
        self.moe = nn.ModuleList(MoEFeedForward(cfg) for _ in self.moe_towers)

    def forward(self, x: Tensor, routing: Routing) -> Tensor:
        """x: (N, dim) tower-sorted -> (N, dim) tower-sorted."""
        parts = list(routing.split(x))  # one (N_k, dim) slice per tower
        if self.plain is not None:
            counts = tuple(routing.counts[k] for k in self.plain_towers)
            xs = torch.cat([parts[k] for k in self.plain_towers])  # (sum N_plain, dim)
            for k, y in zip(self.plain_towers, self.plain(xs, Routing(counts=counts)).split(counts)):
                parts[k] = y
        for k, moe in zip(self.moe_towers, self.moe):
            parts[k] = moe(parts[k])
        return torch.cat(parts)


def make_feedforward(cfg: TransformerConfig) -> nn.Module:
    if cfg.sparsity == "moe":
        return MoEFeedForward(cfg)
    if cfg.moe_towers is not None:
        return HybridFeedForward(cfg)
    return FeedForward(cfg)
