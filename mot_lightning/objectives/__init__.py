"""Training objectives, chosen in YAML by ``model.objective: {class_path: ...}``: ``NextToken`` (cross-entropy
with z-loss over text, discrete image and speech tokens) and ``Transfusion`` (next token for text, diffusion
over continuous image latents, with its samplers in ``diffusion.py``)."""
from mot_lightning.objectives.base import Objective, StepLosses
from mot_lightning.objectives.diffusion import (
    FlowMatching,
    NoiseSchedule,
    cfg_eps,
    ddim_sample,
    ddpm_sample,
    diffusion_loss,
    fixed_noise,
    flow_sample,
)
from mot_lightning.objectives.next_token import ModalityLosses, NextToken, next_token_losses
from mot_lightning.objectives.transfusion import Transfusion

__all__ = [
    "FlowMatching", "ModalityLosses", "NextToken", "NoiseSchedule", "Objective", "StepLosses", "Transfusion",
    "cfg_eps", "ddim_sample", "ddpm_sample", "diffusion_loss", "fixed_noise", "flow_sample",
    "next_token_losses",
]
