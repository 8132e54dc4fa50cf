"""What ``MultiModalLM`` uses besides the objective.

- ``step_metrics.py``: the training losses of a whole optimizer step (gradient accumulation), per training
  source (``source_losses.py``), and the MoE statistics, logged; ``eval_losses.py``: validation losses with
  standard errors over documents; ``grad_clip.py``: gradient clipping under DDP, FSDP1 and FSDP2.
- ``controls.py`` (with ``warm_start.py``, ``freezing.py``, ``param_groups.py``, ``vocab_rows.py``): warm
  start, frozen towers and per-tower optimisation.
"""
from mot_lightning.training.eval_losses import DocumentLosses, EvalLosses, LossMoments
from mot_lightning.training.grad_clip import clip_gradients
from mot_lightning.training.step_metrics import StepAverage, forget_step_value, log_train_losses, moe_metrics

__all__ = ["DocumentLosses", "EvalLosses", "LossMoments", "StepAverage", "clip_gradients",
           "forget_step_value", "log_train_losses", "moe_metrics"]
