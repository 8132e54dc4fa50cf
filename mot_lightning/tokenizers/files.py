"""One file format for every tokenizer, read back with weights-only loading.

A tokenizer file is ``torch.save`` of a plain dict::

    {"format": "mot_lightning.tokenizer", "version": 1, "kind": "<class name>",
     "config": {...plain values...}, "state": {name: tensor}, "meta": {...plain values...}}

Only dicts, lists, strings, numbers and tensors are stored, so
``torch.load(weights_only=True)`` reads it and nothing is ever unpickled.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, TypeVar

import torch

from mot_lightning.tokenizers.base import TokenizerFileError

FORMAT = "mot_lightning.tokenizer"
VERSION = 1
FIT_HINT = "fit a new one with `mot tokenizer fit --config configs/tokenizers/<name>.yaml`"

C = TypeVar("C")


def save_tokenizer_file(
    path: str | os.PathLike,
    kind: str,
    config: Any,
    state: dict[str, torch.Tensor],
    meta: dict[str, Any] | None = None,
) -> None:
    """Write atomically (temp file + rename) so an interrupted save never leaves a half file."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config),
        "state": {name: t.detach().cpu().clone().contiguous() for name, t in state.items()},
        "meta": meta or {},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def read_tokenizer_file(path: str | os.PathLike, expected_kind: str | None = None) -> dict[str, Any]:
    """Load and validate a tokenizer file; every failure is a ``TokenizerFileError`` saying what to do."""
    path = Path(path)
    if not path.is_file():
        raise TokenizerFileError(f"no tokenizer file at {str(path)!r}; check the path or {FIT_HINT}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError (foreign objects), RuntimeError/EOFError (corrupt zip)
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise TokenizerFileError(
            f"{str(path)!r} is not a readable tokenizer file: it is corrupt, truncated, or holds "
            f"objects that weights-only loading refuses ({type(err).__name__}: {reason}). "
            f"Re-save it with Tokenizer.save, or {FIT_HINT}"
        ) from err
    _check_payload(path, payload, expected_kind)
    return payload


def _check_payload(path: Path, payload: Any, expected_kind: str | None) -> None:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise TokenizerFileError(
            f"{str(path)!r} is a torch file but not a mot_lightning tokenizer file (a Lightning "
            f"checkpoint or raw state_dict?). Export a tokenizer with `mot tokenizer fit` (it writes "
            f"the tokenizer file given by --output), or {FIT_HINT}"
        )
    version = payload.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise TokenizerFileError(
            f"{str(path)!r} has tokenizer file version {version!r}; this mot_lightning reads up to "
            f"version {VERSION}: upgrade mot_lightning or {FIT_HINT}"
        )
    kind = payload.get("kind")
    if expected_kind is not None and kind != expected_kind:
        raise TokenizerFileError(
            f"{str(path)!r} holds a {kind}, not a {expected_kind}; load it with "
            f"{kind}.load(path) or mot_lightning.tokenizers.load_tokenizer(path)"
        )


def config_from_payload(cls: type[C], payload: dict[str, Any], path: str | os.PathLike) -> C:
    """Rebuild a config dataclass; unknown or missing fields mean the file is from another version."""
    fields = dict(payload.get("config") or {})
    for f in dataclasses.fields(cls):  # saved tuples/lists come back as lists; keep the declared kind
        if isinstance(fields.get(f.name), list) and "tuple" in str(f.type):
            fields[f.name] = tuple(fields[f.name])
    try:
        return cls(**fields)
    except (TypeError, ValueError) as err:
        raise TokenizerFileError(
            f"{str(path)!r} has a {cls.__name__} this version cannot use ({err}); {FIT_HINT}"
        ) from err


def require_state(payload: dict[str, Any], names: list[str], path: str | os.PathLike) -> dict[str, torch.Tensor]:
    state = payload.get("state") or {}
    missing = [n for n in names if not isinstance(state.get(n), torch.Tensor)]
    if missing:
        raise TokenizerFileError(f"{str(path)!r} lacks tensors {missing}: the file is incomplete; {FIT_HINT}")
    return state
