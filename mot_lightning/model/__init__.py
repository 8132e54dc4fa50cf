"""The backbone (docs/contracts.md, "Backbone"): ``Transformer(TransformerConfig(...))(x, modality)``."""
from mot_lightning.model.accounting import BackboneStats, backbone_stats
from mot_lightning.model.config import PRESETS, TransformerConfig
from mot_lightning.model.moe import MoEStats
from mot_lightning.model.transformer import Transformer

__all__ = ["Transformer", "TransformerConfig", "PRESETS", "BackboneStats", "backbone_stats", "MoEStats"]
