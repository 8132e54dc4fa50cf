"""``TokenLM``: shared token embedding -> backbone -> shared output head (one ``nn.Module``).

Embeddings and the head stay shared across modalities (the paper unties only
non-embedding weights). Kept as one module so FSDP2 can shard it as the root
and so its ``forward`` is what the LightningModule calls.
"""
from __future__ import annotations

from torch import Tensor, nn

from mot_lightning.model.config import TransformerConfig
from mot_lightning.model.kv_cache import KVCache
from mot_lightning.model.transformer import Transformer


class TokenLM(nn.Module):
    def __init__(self, cfg: TransformerConfig, vocab_size: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, cfg.dim)
        self.backbone = Transformer(cfg)
        self.head = nn.Linear(cfg.dim, vocab_size, bias=False)
        nn.init.normal_(self.embed.weight, std=cfg.init_std)
        nn.init.normal_(self.head.weight, std=cfg.init_std)

    def forward(self, tokens: Tensor, modality: Tensor, *, positions: Tensor | None = None,
                doc_ids: Tensor | None = None, cache: KVCache | None = None) -> Tensor:
        """tokens, modality: long[B, T] -> logits float[B, T, vocab_size].

        With ``cache`` (decoding) ``tokens`` are only the new ones (see ``Transformer.forward``).
        """
        h = self.backbone(self.embed(tokens), modality, positions=positions, doc_ids=doc_ids, cache=cache)
        return self.head(h)
