"""Shard URL expansion: what a config writes -> the list of URLs (or paths) to read.

Accepted, alone or in a list: a path or URL; a brace pattern ``a-{000000..000099}.tar``;
``::``-joined alternatives ``a.tar::b.tar`` (both via WebDataset's ``expand_urls``,
which also substitutes ``$WDS_*`` environment variables); a local glob
``/data/*.tar`` (``**`` recurses), sorted. Remote URLs (``https://``, ``pipe:``,
``s3://``...) pass through untouched: the reader opens them with WebDataset's
``gopen``. ``file:`` URLs count as local.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence

import webdataset as wds

_GLOB_CHARS = "*?["


def is_local(url: str) -> bool:
    """A path on this machine (plain path or ``file:`` URL), not a remote or ``pipe:`` URL."""
    return ("://" not in url and not url.startswith("pipe:")) or url.startswith("file:")


def local_path(url: str) -> str:
    """The filesystem path of a local URL (``file:///x`` and ``file:x`` lose their prefix)."""
    return url[len("file://") :] if url.startswith("file://") else url.removeprefix("file:")


def expand(urls: str | Sequence[str], name: str = "urls") -> list[str]:
    """Brace patterns, ``::`` lists, lists and local globs -> a flat URL list, in the order given.

    ``name`` says whose URLs these are in error messages (e.g. ``"source 'captions'"``). A local
    glob that matches nothing raises ``FileNotFoundError``; nothing at all raises ``ValueError``.
    Non-glob paths are not checked for existence here (the caller decides what missing means).
    """
    items = [urls] if isinstance(urls, str) else list(urls)
    out: list[str] = []
    for item in items:
        for url in wds.shardlists.expand_urls(item):
            if is_local(url) and any(ch in url for ch in _GLOB_CHARS):
                matches = sorted(glob.glob(local_path(url), recursive=True))
                if not matches:
                    raise FileNotFoundError(f"{name}: no file matches {url!r}")
                out += matches
            else:
                out.append(url)
    if not out:
        raise ValueError(f"{name} lists no shard URLs; give it a path, pattern or list")
    return out
