"""Training objectives: next-token cross-entropy with z-loss (text, VQ image, speech units)."""
from mot_lightning.objectives.next_token import ModalityLosses, next_token_losses

__all__ = ["ModalityLosses", "next_token_losses"]
