"""Shard URL expansion: what a config writes -> the list of URLs (or paths) to read.

Accepted, alone or in a list: a path or URL; a brace pattern ``a-{000000..000099}.tar``;
``::``-joined alternatives ``a.tar::b.tar`` (both via WebDataset's ``expand_urls``,
which also substitutes ``$WDS_*`` environment variables); a local glob
``/data/*.tar`` (``**`` recurses), sorted. Remote URLs (``https://``, ``pipe:``,
``s3://``...) pass through untouched. ``file:`` URLs count as local.

Opening (``open_url``): local paths with ``open``; ``pipe:CMD`` with WebDataset's
``gopen`` (the command's stdout); every other ``scheme://`` URL with fsspec
(``https://``, ``s3://``, ``gs://``, ``az://``, ``hf://``...). fsspec rather than
WebDataset's ``gopen`` for those: it reads in-process (``gopen`` shells out to
``curl``/``gsutil``, which must be installed, and reports a failure only as an
exit status), one interface covers every object store through pip-installable
backends (``s3fs``, ``gcsfs``, ``adlfs``), a dropped connection raises at the
read that failed, and it is already installed with Lightning. HTTP(S) is
streamed (one GET, no range requests: any server works); object stores read
ahead in large blocks. ``check_openable`` names the missing backend package
before anything is read.
"""

from __future__ import annotations

import glob
import time
from collections.abc import Callable, Iterable, Sequence
from typing import BinaryIO

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


_STREAMED = ("http", "https")  # read front to back in one request (tar shards are read sequentially)
_READ_AHEAD = 8 * 2**20  # bytes per request for object stores


# URL schemes whose shards are generated, not opened: scheme -> samples(url) (``reader.register_generator``)
GENERATED: dict[str, Callable[[str], Iterable[dict]]] = {}


def scheme(url: str) -> str:
    """``"file"`` for local paths, ``"pipe"`` for ``pipe:`` commands, else the URL's scheme (``"s3"``)."""
    if is_local(url):
        return "file"
    return "pipe" if url.startswith("pipe:") else url.split("://", 1)[0].lower()


def check_openable(urls: Sequence[str], name: str = "urls") -> None:
    """Raise (naming ``name`` and the package to install) if a URL's scheme has no fsspec backend here."""
    import fsspec

    for proto in sorted({scheme(u) for u in urls} - {"file", "pipe", *GENERATED}):
        try:
            fsspec.get_filesystem_class(proto)
        except ImportError as err:  # fsspec names the package: "Install s3fs to access S3"
            raise ImportError(f"{name}: reading {proto}:// URLs needs an fsspec backend that is not installed: "
                              f"{err} (pip install it where the data is read)") from None
        except ValueError as err:
            raise ValueError(f"{name}: no reader for {proto}:// URLs ({err}); use a local path, "
                             "pipe:COMMAND, or a scheme fsspec knows (https, s3, gs, az, hf, ...)") from None


def open_url(url: str) -> BinaryIO:
    """A binary file object reading ``url`` from the start (close it when done)."""
    proto = scheme(url)
    if proto == "file":
        return open(local_path(url), "rb")
    if proto == "pipe":
        return wds.gopen(url, "rb")
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    if proto in _STREAMED:
        return _retried(url, lambda: fs.open(path, "rb", block_size=0))
    return fs.open(path, "rb", block_size=_READ_AHEAD, cache_type="readahead")


HTTP_TRIES = 4  # an HTTP shard is opened this many times before it counts as unreadable
HTTP_WAIT = 0.5  # seconds before the second try, doubled for each further one


def _retried(url: str, open_once):
    """``open_once()`` retried with backoff: a server answering 500 or dropping the connection is usually
    passing trouble. fsspec reports every failed HTTP open as ``FileNotFoundError``, so the last error is
    re-raised as an ``OSError`` naming the URL and the tries (a real 404 costs the retries too)."""
    for attempt in range(HTTP_TRIES):
        try:
            return open_once()
        except (OSError, ValueError) as err:
            if attempt == HTTP_TRIES - 1:
                raise OSError(f"{url}: could not be opened in {HTTP_TRIES} tries (missing, or the server failed: "
                              f"{type(err).__name__}: {err})") from err
            time.sleep(HTTP_WAIT * 2**attempt)
    raise AssertionError("unreachable")
