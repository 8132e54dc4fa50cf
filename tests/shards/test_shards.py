"""The shard layer: one URL expander and one tar reader for the data module and tokenizer fitting."""
from __future__ import annotations

import io
import tarfile

import pytest

from mot_lightning.shards.reader import shard_samples
from mot_lightning.shards.urls import expand, is_local, local_path
from mot_lightning.tokenizers.fit_inputs import iter_items
from mot_lightning.tokenizers.media import TEXT_EXTS


class Recorder:
    """A ``Counts``: remembers every event."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, str]] = []

    def add(self, name: str, n: int = 1, detail: str = "") -> None:
        self.events.append((name, n, detail))


def write_tar(path, members: list[tuple[str, bytes]]) -> str:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def test_expand_braces_lists_globs_and_remote_urls(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b-001.tar", "a-000.tar", "sub/c-002.tar"):
        (tmp_path / name).write_bytes(b"")
    assert expand("x-{000..002}.tar::y.tar") == ["x-000.tar", "x-001.tar", "x-002.tar", "y.tar"]
    assert expand(["p.tar", "q-{0..1}.tar"]) == ["p.tar", "q-0.tar", "q-1.tar"]
    assert expand(str(tmp_path / "*.tar")) == [str(tmp_path / "a-000.tar"), str(tmp_path / "b-001.tar")]
    assert expand(str(tmp_path / "**" / "*.tar"))[-1] == str(tmp_path / "sub" / "c-002.tar")  # ** recurses
    remote = "https://host/shard-*.tar"
    assert expand(remote) == [remote] and not is_local(remote) and not is_local("pipe:cat a.tar")
    assert is_local("file:///data/a.tar") and local_path("file:///data/a.tar") == "/data/a.tar"
    assert is_local("/data/a.tar") and local_path("file:a.tar") == "a.tar"
    with pytest.raises(FileNotFoundError, match="source 'x': no file matches"):
        expand(str(tmp_path / "none-*.tar"), "source 'x'")
    with pytest.raises(ValueError, match="data.path lists no shard URLs"):
        expand([], "data.path")


def test_reader_groups_by_key_and_counts_through_the_protocol(tmp_path):
    good = write_tar(tmp_path / "a.tar", [("k0.txt", b"zero"), ("k0.TXT", b"twice"), ("__meta__", b"m"),
                                          ("k1.txt", b"one"), ("k1.img0.png", b"png")])
    broken = tmp_path / "b.tar"
    broken.write_bytes(b"not a tar file at all" * 40)
    counts = Recorder()
    samples = list(shard_samples([good, str(broken)], counts))
    assert [(s["__key__"], s.get("txt")) for s in samples] == [("k0", b"zero"), ("k1", b"one")]
    assert samples[1]["img0.png"] == b"png"
    assert [name for name, _, _ in counts.events] == ["duplicate_member", "unreadable_shard"]
    assert str(broken) in counts.events[1][2]


def test_tokenizer_fitting_reads_shards_through_the_same_reader(tmp_path):
    write_tar(tmp_path / "t-000.tar", [("d0.txt", b"first"), ("d1.txt", b"second")])
    (tmp_path / "t-001.tar").write_bytes(b"\x00garbage" * 100)
    write_tar(tmp_path / "t-002.tar", [("d2.txt", b"third")])
    with pytest.warns(UserWarning, match="unreadable_shard"):
        items = list(iter_items(str(tmp_path / "t-{000..002}.tar"), TEXT_EXTS, lambda b: b.decode()))
    assert items == [("d0.txt", "first"), ("d1.txt", "second"), ("d2.txt", "third")]
    with pytest.raises(FileNotFoundError, match="1 of 4 files"):
        list(iter_items(str(tmp_path / "t-{000..003}.tar"), TEXT_EXTS, lambda b: b.decode()))
