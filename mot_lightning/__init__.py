"""mot_lightning: Mixture-of-Transformers experiments with PyTorch Lightning."""
from mot_lightning.modality import Modality

__all__ = ["Modality"]
__version__ = "0.1.0"
