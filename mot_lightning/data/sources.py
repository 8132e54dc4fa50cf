"""Source configuration (what YAML writes) and its resolution into shard URL lists at setup.

Checked before anything is read: the weight (finite, > 0: when the config is parsed), the URL
schemes (a backend for each, ``shards/urls.py``), that local shards exist and are not all empty.
Local shards also get their sizes (bytes of tar content, 0 for a shard without a member), which
``data/split.py`` balances across the stream's consumers; remote sizes are unknown (equal).
"""

from __future__ import annotations

import math
import os
import tarfile
from dataclasses import dataclass, field

from mot_lightning.data.stream import ResolvedSource
from mot_lightning.modality import Modality
from mot_lightning.shards.urls import check_openable, expand, is_local, local_path

_TAR_END = 1024  # the two zero blocks that end every tar file
_TAR_RECORD = 10240  # tar files are padded to whole records of this size

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

    def __post_init__(self) -> None:
        check_weight(self.name, self.weight)


def check_weight(name: str, weight: float) -> None:
    if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"source {name!r}: weight must be a finite number > 0, got {weight!r}; fix its "
                         "`weight:` in data.sources")


def resolve(config: SourceConfig, allowed: frozenset[Modality], check_local: bool = True) -> ResolvedSource:
    """Expand URLs, check schemes and local shards (exist, not all empty), intersect the modality filter."""
    check_weight(config.name, config.weight)
    urls = expand(config.urls, f"source {config.name!r}")
    check_openable(urls, f"source {config.name!r}")
    sizes = _check_local(urls, config.name) if check_local else None
    keep = frozenset(Modality.parse(m) for m in config.modalities) & allowed
    if Modality.TEXT not in keep:
        raise ValueError(f"source {config.name!r}: keep the text modality (it carries the document markers)")
    return ResolvedSource(config.name, tuple(urls), float(config.weight), keep, sizes)


def _check_local(urls: list[str], name: str) -> tuple[int, ...] | None:
    """Sizes of the shards when all are local (None otherwise); raises for missing or all-empty shards."""
    local = [local_path(u) for u in urls if is_local(u)]
    missing = [p for p in local if not os.path.isfile(p)]
    if missing:
        hint = " (run `mot data demo` to create the demo corpus)" if "demo" in missing[0] else ""
        raise FileNotFoundError(
            f"source {name!r}: {len(missing)} of {len(urls)} shards not found, first: {missing[0]!r}{hint}"
        )
    if not local or len(local) < len(urls):
        return None
    sizes = tuple(_content_bytes(p) for p in local)
    if not any(sizes):
        raise ValueError(f"source {name!r}: all {len(local)} shards are empty tar files; nothing to read")
    return sizes


def _content_bytes(path: str) -> int:
    size = os.path.getsize(path)
    if size <= _TAR_RECORD and not _has_member(path):  # an empty archive is one padded record
        return 0
    return max(size - _TAR_END, 1)


def _has_member(path: str) -> bool:
    try:
        with tarfile.open(path, "r|*") as tar:
            return tar.next() is not None
    except (tarfile.TarError, OSError):
        return True  # unreadable: let the stream count it instead of failing setup
