"""SwiGLU feed-forward, untied per tower when ``"ffn"`` is in ``cfg.untied``."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mot_lightning.model.config import TransformerConfig
from mot_lightning.model.untied import Routing, UntiedLinear, scaled_std


class FeedForward(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        n, copy = cfg.towers_for("ffn"), cfg.tower_init == "copy"
        self.hidden = cfg.ffn_hidden
        # gate and up projections fused into one matmul per tower
        self.w13 = UntiedLinear(cfg.dim, 2 * cfg.ffn_hidden, n, std=cfg.init_std, copy_towers=copy)
        self.w2 = UntiedLinear(cfg.ffn_hidden, cfg.dim, n, std=scaled_std(cfg.init_std, cfg.n_layers),
                               copy_towers=copy)

    def forward(self, x: Tensor, routing: Routing) -> Tensor:
        gate, up = self.w13(x, routing).split(self.hidden, dim=-1)  # (N, hidden) each
        return self.w2(F.silu(gate) * up, routing)
