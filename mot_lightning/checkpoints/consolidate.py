"""One checkpoint file from a sharded one (FSDP2 with ``save_distributed_checkpoint``).

``ModelParallelStrategy`` writes ``last.ckpt`` as a directory: ``torch.distributed.checkpoint`` shards
(``.metadata``, ``__<rank>_0.distcp``) plus Lightning's ``meta.pt`` (step, hyperparameters, loops).
``consolidate`` reads the model's tensor shards in one process (no process group; the pickled
``.metadata`` is checked first, ``loading.check_sharded_metadata``) and writes a Lightning-style file
holding the full ``state_dict`` and the metadata ``mot generate`` and ``mot export`` use, with the
callbacks' states (``meta.pt`` holds them whole: the ``EMA`` callback's averages, gathered, for
``--ema``). The optimizer and loop states are left out: the file is for inference and export, not for
resuming.
"""
from __future__ import annotations

from pathlib import Path

from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

from mot_lightning.checkpoints.atomic import atomic_torch_save
from mot_lightning.checkpoints.loading import META_FILE, check_sharded_metadata, is_sharded, load_checkpoint

KEPT_META = ("epoch", "global_step", "pytorch-lightning_version", "hparams_name", "hyper_parameters",
             "callbacks")  # the callbacks' states: the EMA averages


def sharded_state_dict(directory: str | Path) -> dict:
    """The full model ``state_dict`` (the LightningModule's keys, e.g. ``net.embed.weight``) of a sharded
    checkpoint, assembled in this process; optimizer shards are not read."""
    directory = Path(directory)
    if not is_sharded(directory):
        raise FileNotFoundError(f"{directory} is not a sharded checkpoint directory (no .metadata file from "
                                "torch.distributed.checkpoint)")
    check_sharded_metadata(directory)
    state: dict = {}
    _load_state_dict(state, storage_reader=FileSystemReader(directory), planner=_ModelTensors(), no_dist=True)
    if "state_dict" not in state:
        raise ValueError(f"{directory} holds no model tensors (no state_dict.* entries)")
    return state["state_dict"]


class _ModelTensors(_EmptyStateDictLoadPlanner):
    """Builds empty tensors from the metadata for the model's entries only: optimizer shards are not read, and
    no non-tensor entry is (DCP unpickles those without restriction)."""

    def _should_include_key(self, key: str, metadata: Metadata) -> bool:
        return key.startswith("state_dict.") and isinstance(metadata.state_dict_metadata[key],
                                                            TensorStorageMetadata)


def consolidate(directory: str | Path, out: str | Path) -> dict:
    """Write ``out`` (one file, atomically) from the sharded checkpoint ``directory``; returns it."""
    directory = Path(directory)
    state_dict = sharded_state_dict(directory)
    meta_path = directory / META_FILE
    meta = load_checkpoint(meta_path) if meta_path.is_file() else {}
    checkpoint = {k: meta[k] for k in KEPT_META if k in meta}
    checkpoint["state_dict"] = state_dict
    checkpoint["consolidated_from"] = str(directory)
    atomic_torch_save(checkpoint, out)
    return checkpoint
