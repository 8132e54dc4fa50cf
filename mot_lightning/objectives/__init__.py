"""Training objectives: next-token cross-entropy with z-loss (text, VQ image, speech units) and
the diffusion objective with its samplers (Transfusion's continuous image latents)."""
from mot_lightning.objectives.diffusion import (
    DiffusionConfig,
    FlowMatching,
    NoiseSchedule,
    cfg_eps,
    ddim_sample,
    ddpm_sample,
    diffusion_loss,
    drop_condition,
    fixed_noise,
    flow_sample,
    guided,
    transfusion_loss,
)
from mot_lightning.objectives.next_token import ModalityLosses, next_token_losses

__all__ = [
    "DiffusionConfig", "FlowMatching", "ModalityLosses", "NoiseSchedule", "cfg_eps", "ddim_sample", "ddpm_sample",
    "diffusion_loss", "drop_condition", "fixed_noise", "flow_sample", "guided", "next_token_losses",
    "transfusion_loss",
]
