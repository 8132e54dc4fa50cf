"""Checkpoints: loaded without running code, written atomically, checked against the config, and made
to travel.

- ``loading.py``: ``load_checkpoint`` (weights-only; refuses any other object, naming it).
- ``atomic.py``: ``AtomicCheckpointIO`` (``mot fit``'s writer): beside the target, fsync, rename.
- ``model_config.py``: a checkpoint trained with another model config is refused, naming the differences.
- ``consolidate.py``: one file from a sharded FSDP2 checkpoint (``mot checkpoint consolidate``).
- ``export.py`` / ``weights.py``: ``mot export`` folders (safetensors + config + tokenizers) and what
  ``mot generate`` loads (a checkpoint with its YAML, or an export folder).

Tool modules (``export.py``, ``weights.py``, ``consolidate.py``) are imported by the commands
(``mot_lightning/commands``), not here.
"""
from mot_lightning.checkpoints.atomic import AtomicCheckpointIO, atomic_torch_save, use_atomic_io
from mot_lightning.checkpoints.loading import (
    UnsafeCheckpointError,
    checkpoint_hparams,
    is_sharded,
    load_checkpoint,
)
from mot_lightning.checkpoints.model_config import (
    check_model_config,
    model_config_differences,
    model_section,
    plain_config,
)

__all__ = [
    "AtomicCheckpointIO",
    "UnsafeCheckpointError",
    "atomic_torch_save",
    "check_model_config",
    "checkpoint_hparams",
    "is_sharded",
    "load_checkpoint",
    "model_config_differences",
    "model_section",
    "plain_config",
    "use_atomic_io",
]
