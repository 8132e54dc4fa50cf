"""Atomic checkpoint files on any local filesystem.

Lightning's default writer stages a checkpoint in ``$TMPDIR`` and moves it over the target; when the
checkpoint directory is on another filesystem (a mounted ``runs/``), the move is a copy, so a
``kill -9`` during it leaves ``last.ckpt`` truncated and the staged file behind. Here the file is
written beside its target (``<name>.tmp-<pid>``, same directory, so same filesystem), flushed and
fsynced, checked to load weights-only, and then ``os.replace``d over the target (atomic on POSIX),
and the directory is fsynced: the previous ``last.ckpt`` stays complete until the new one is. A failed
write removes its temporary; one left by a killed process is removed by the next save.

``AtomicCheckpointIO`` is ``mot fit``'s checkpoint writer (``use_atomic_io``, called by the CLI) unless
``trainer.plugins`` names another ``CheckpointIO``. Sharded FSDP2 checkpoints (directories written by
``torch.distributed.checkpoint``) are the strategy's own and do not pass through it; a full-state
checkpoint of any strategy does (rank 0 writes it).
"""
from __future__ import annotations

import glob
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO

from mot_lightning.checkpoints.loading import UnsafeCheckpointError, load_checkpoint, unsafe_globals

TMP_MARK = ".tmp-"  # <name>.tmp-<pid>


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` such that ``path`` is always either the previous file or the new one.

    Refuses (``UnsafeCheckpointError``, nothing replaced) an object that weights-only loading would
    refuse, so a checkpoint that cannot be loaded back is never written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        unsafe = unsafe_globals(tmp)
        if unsafe:
            raise UnsafeCheckpointError(f"not writing {path}: it would hold objects weights-only loading "
                                        f"refuses ({', '.join(unsafe[:5])}); make the state_dict of the module, "
                                        "callback or data module that holds them plain (tensors, numbers, "
                                        "strings, lists, dicts)")
        os.replace(tmp, path)
    except BaseException:  # also KeyboardInterrupt: never leave a temporary behind
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # the rename itself survives a power loss


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete ``<name>.tmp-<pid>`` files beside ``path`` whose process is gone (killed mid-save)."""
    removed = []
    for tmp in Path(path.parent).glob(glob.escape(path.name) + TMP_MARK + "*"):
        pid = tmp.name.rpartition(TMP_MARK)[2]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


def _is_local(path: Any) -> bool:
    """A plain path (no ``scheme://``): written here; URLs (``s3://``, ``file://``) go through fsspec."""
    return "://" not in str(path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO``: local files written by ``atomic_torch_save`` and read weights-only by
    ``load_checkpoint``; remote (fsspec) URLs as Lightning does, read weights-only too."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Callable | Any = "cpu",
                        weights_only: bool | None = None) -> dict[str, Any]:
        if not _is_local(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return load_checkpoint(path, map_location=map_location)


def use_atomic_io(trainer) -> None:
    """Make ``trainer`` write checkpoints with ``AtomicCheckpointIO`` unless a ``CheckpointIO`` was
    configured (``trainer.plugins``); a wrapper such as ``AsyncCheckpointIO`` without one gets it inside."""
    strategy = trainer.strategy
    configured = strategy._checkpoint_io  # None: nobody chose one (the getter would make a TorchCheckpointIO)
    if configured is None:
        strategy.checkpoint_io = AtomicCheckpointIO()
    elif isinstance(configured, _WrappingCheckpointIO) and configured.checkpoint_io is None:
        configured.checkpoint_io = AtomicCheckpointIO()
