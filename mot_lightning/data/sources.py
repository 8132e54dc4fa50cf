"""Source configuration (what YAML writes) and its resolution into shard URL lists at setup."""

from __future__ import annotations

import glob
import os
import tarfile
from dataclasses import dataclass, field

import webdataset as wds

from mot_lightning.data.stream import ResolvedSource
from mot_lightning.modality import Modality

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
    urls = expand(config.urls, config.name)
    if check_local:
        _check_local(urls, config.name)
    keep = frozenset(Modality.parse(m) for m in config.modalities) & allowed
    if Modality.TEXT not in keep:
        raise ValueError(f"source {config.name!r}: keep the text modality (it carries the document markers)")
    return ResolvedSource(config.name, tuple(urls), float(config.weight), keep)


def expand(urls: str | list[str], name: str) -> list[str]:
    """Brace patterns (``a-{000..009}.tar``), ``::``-joined lists and local globs -> URL list."""
    items = [urls] if isinstance(urls, str) else list(urls)
    out: list[str] = []
    for item in items:
        for url in wds.shardlists.expand_urls(item):
            if _is_local(url) and any(ch in url for ch in "*?["):
                matches = sorted(glob.glob(_local_path(url)))
                if not matches:
                    raise FileNotFoundError(f"source {name!r}: no shard matches {url!r}")
                out += matches
            else:
                out.append(url)
    if not out:
        raise ValueError(f"source {name!r} lists no shard URLs; give `urls` a path, pattern or list")
    return out


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:") or url.startswith("file:")


def _local_path(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url.removeprefix("file:")


def _check_local(urls: list[str], name: str) -> None:
    local = [_local_path(u) for u in urls if _is_local(u)]
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
