"""Loading checkpoints without running code from them.

Every checkpoint the app reads (``mot generate``, ``mot export``, ``mot fit|validate|test --ckpt_path``)
goes through ``load_checkpoint``: ``torch.load(weights_only=True)``, so the unpickler builds only
tensors, containers and plain values and refuses every other global *before* calling anything. No
extra globals are allowlisted: a checkpoint written by ``mot fit`` holds only such values (LightningCLI
stores the module's arguments as their YAML form, and ``MultiModalLM.on_save_checkpoint`` makes any
other hyperparameters plain), and the atomic writer (``atomic.py``) refuses to write one that does not.

Sharded (FSDP2) checkpoints: ``torch.distributed.checkpoint`` unpickles their ``.metadata`` without
restriction, so the app reads it first with ``check_sharded_metadata`` (``--ckpt_path <dir>``,
``mot checkpoint consolidate``); ``meta.pt`` is read weights-only. ``--ckpt_path last`` of a sharded run
is the run's own directory, restored by the strategy itself.
"""
from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

import torch

META_FILE = "meta.pt"  # Lightning's metadata file inside a sharded (torch.distributed.checkpoint) directory


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds objects other than tensors and plain values: it is not loaded."""


def is_sharded(path: str | Path) -> bool:
    """A directory written by ``torch.distributed.checkpoint`` (FSDP2 with ``save_distributed_checkpoint``)."""
    return (Path(path) / ".metadata").is_file()


def unsafe_message(path: str | Path, names: list[str]) -> str:
    shown = ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")
    return (f"{path} holds objects the app does not load: {shown or 'unknown globals'}. A checkpoint written "
            "by `mot fit` holds only tensors and plain values; unpickling this one could run code from it, so "
            "it was not loaded. If you trust where it comes from, keep only its weights, e.g.\n"
            f"  python -c \"import torch; c = torch.load('{path}', weights_only=False); "
            "torch.save({'state_dict': c['state_dict']}, 'weights.ckpt')\"\n"
            "and pass weights.ckpt (the model config then comes from --config alone).")


def load_checkpoint(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict:
    """A checkpoint file as a dict of tensors and plain values; refuses anything else.

    Raises ``FileNotFoundError`` naming a missing path (and a sharded directory, which needs
    ``mot checkpoint consolidate`` first), ``UnsafeCheckpointError`` for a file holding other objects
    (nothing in it has run), ``ValueError`` for a truncated or non-torch file.
    """
    path = Path(path)
    if path.is_dir():
        hint = (f"`mot checkpoint consolidate {path} --out model.ckpt` makes one file of it" if is_sharded(path)
                else "expected a .ckpt file")
        raise FileNotFoundError(f"{path} is a directory, not a checkpoint file: {hint}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint file (no such file)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        raise UnsafeCheckpointError(unsafe_message(path, unsafe_globals(path))) from None
    except (RuntimeError, EOFError) as err:
        raise ValueError(f"{path} is not a complete torch checkpoint (truncated, or another format): {err}"
                         + _siblings_hint(path)) from None


def _siblings_hint(path: Path) -> str:
    """The other checkpoint files beside a damaged one, newest first: what to resume from instead."""
    others = sorted((p for p in path.parent.glob("*.ckpt") if p != path and p.is_file()),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    if not others:
        return ""
    return ("\nother checkpoints beside it, newest first: " + ", ".join(p.name for p in others[:4])
            + f"; resume from one with --ckpt_path {others[0]}")


def unsafe_globals(path: str | Path) -> list[str]:
    """Names of the classes/functions a checkpoint file would need beyond weights-only loading's allowlist
    (read from its pickle without running it)."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except (ValueError, RuntimeError):
        return []


# What the pickled ``.metadata`` of a torch.distributed.checkpoint directory may name (DCP itself reads it
# with an unrestricted ``pickle.load``): its metadata dataclasses and enums, sizes, dtypes, layouts, paths.
_DCP_CLASSES_FROM = {"torch.distributed.checkpoint.metadata": None,
                     "torch.distributed.checkpoint.filesystem": {"_StorageInfo"}}
_DCP_GLOBALS = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
                ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath"),
                ("pathlib", "PureWindowsPath")}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if "." not in name and _dcp_global_allowed(module, name):
            return super().find_class(module, name)
        raise UnsafeCheckpointError(f"{module}.{name}")


def _dcp_global_allowed(module: str, name: str) -> bool:
    if (module, name) in _DCP_GLOBALS:
        return True
    if module == "torch":
        return isinstance(getattr(torch, name, None), torch.dtype)
    if module not in _DCP_CLASSES_FROM:
        return False
    names = _DCP_CLASSES_FROM[module]
    obj = getattr(importlib.import_module(module), name, None)
    return (names is None or name in names) and isinstance(obj, type) and obj.__module__ == module


def check_sharded_metadata(directory: str | Path) -> None:
    """Refuse a sharded checkpoint whose ``.metadata`` pickle names anything but DCP's metadata types (read
    with a restricted unpickler, before torch.distributed.checkpoint unpickles it without restriction)."""
    path = Path(directory) / ".metadata"
    try:
        with open(path, "rb") as f:
            _MetadataUnpickler(f).load()
    except UnsafeCheckpointError as err:
        raise UnsafeCheckpointError(unsafe_message(path, [str(err)])) from None


def checkpoint_hparams(path: str | Path) -> dict | None:
    """The ``hyper_parameters`` of a checkpoint file or sharded checkpoint directory (None: none stored).
    Reads a file memory-mapped: its tensors are not loaded."""
    path = Path(path)
    if is_sharded(path):
        check_sharded_metadata(path)
        return load_checkpoint(path / META_FILE).get("hyper_parameters")
    return load_checkpoint(path, mmap=True).get("hyper_parameters")


# the `callbacks` entry the EMA callback (callbacks/ema.py) writes: its averages, read here from a file
EMA_FORMAT = "mot_lightning.ema"


def ema_state_dict(checkpoint: dict) -> dict[str, torch.Tensor] | None:
    """A checkpoint's module ``state_dict`` with the EMA weights in place of the live ones (None: the run
    had no EMA callback). Load it like ``checkpoint["state_dict"]``."""
    for state in (checkpoint.get("callbacks") or {}).values():
        if isinstance(state, dict) and state.get("format") == EMA_FORMAT and state.get("weights"):
            return {**checkpoint["state_dict"], **state["weights"]}
    return None
