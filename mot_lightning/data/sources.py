"""Source configuration (what YAML writes) and its resolution into shard URL lists at setup."""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass, field

from mot_lightning.data.stream import ResolvedSource
from mot_lightning.modality import Modality
from mot_lightning.shards.urls import expand, is_local, local_path

ALL_MODALITIES = [m.label for m in Modality]


@dataclass
class SourceConfig:
    """One shard set. In YAML::

    sources:
      - name: captions
        urls: /data/cc/shard-{000000..000099}.tar   # brace pattern, glob, list, or remote URL
        weight: 2.0                                 # training sampling weight (ignored for val sets)
        modalities: [text, image]                   # segments of other modalities are dropped
    """

    name: str
    urls: str | list[str]
    weight: float = 1.0
    modalities: list[str] = field(default_factory=lambda: list(ALL_MODALITIES))


def resolve(config: SourceConfig, allowed: frozenset[Modality], check_local: bool = True) -> ResolvedSource:
    """Expand URLs, check local shards exist and are not all empty, intersect the modality filter."""
    if config.weight <= 0:
        raise ValueError(f"source {config.name!r}: weight must be > 0, got {config.weight}")
    urls = expand(config.urls, f"source {config.name!r}")
    if check_local:
        _check_local(urls, config.name)
    keep = frozenset(Modality.parse(m) for m in config.modalities) & allowed
    if Modality.TEXT not in keep:
        raise ValueError(f"source {config.name!r}: keep the text modality (it carries the document markers)")
    return ResolvedSource(config.name, tuple(urls), float(config.weight), keep)


def _check_local(urls: list[str], name: str) -> None:
    local = [local_path(u) for u in urls if is_local(u)]
    missing = [p for p in local if not os.path.isfile(p)]
    if missing:
        hint = " (run `mot data demo` to create the demo corpus)" if "demo" in missing[0] else ""
        raise FileNotFoundError(
            f"source {name!r}: {len(missing)} of {len(urls)} shards not found, first: {missing[0]!r}{hint}"
        )
    if local and len(local) == len(urls) and not any(_has_member(p) for p in local):
        raise ValueError(f"source {name!r}: all {len(local)} shards are empty tar files; nothing to read")


def _has_member(path: str) -> bool:
    try:
        with tarfile.open(path, "r|*") as tar:
            return tar.next() is not None
    except (tarfile.TarError, OSError):
        return True  # unreadable: let the stream count it instead of failing setup
