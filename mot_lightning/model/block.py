"""Transformer blocks: the two norm layouts, each a small class picked by ``cfg.norm_layout``."""
from __future__ import annotations

from torch import Tensor, nn

from mot_lightning.model.attention import Attention, BatchContext
from mot_lightning.model.config import TransformerConfig
from mot_lightning.model.feedforward import make_feedforward
from mot_lightning.model.untied import UntiedRMSNorm


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        n_norm, towers = cfg.towers_for("norm"), cfg.tower_ids_for("norm")
        self.attn = Attention(cfg)
        self.ffn = make_feedforward(cfg)
        self.attn_norm = UntiedRMSNorm(cfg.dim, n_norm, cfg.norm_eps, towers)
        self.ffn_norm = UntiedRMSNorm(cfg.dim, n_norm, cfg.norm_eps, towers)


class PreNormBlock(Block):
    """``h = x + attn(norm(x)); out = h + ffn(norm(h))`` (LLaMA; later MoT codebases)."""

    def forward(self, x: Tensor, ctx: BatchContext) -> Tensor:
        r = ctx.routing
        h = x + self.attn(self.attn_norm(x, r), ctx)
        return h + self.ffn(self.ffn_norm(h, r), r)


class PostSublayerNormBlock(Block):
    """Chameleon's norm reordering: ``h = x + norm(attn(x)); out = h + norm(ffn(h))`` (paper's reference)."""

    def forward(self, x: Tensor, ctx: BatchContext) -> Tensor:
        r = ctx.routing
        h = x + self.attn_norm(self.attn(x, ctx), r)
        return h + self.ffn_norm(self.ffn(h, r), r)


BLOCKS: dict[str, type[Block]] = {"pre": PreNormBlock, "post_sublayer": PostSublayerNormBlock}
