"""Training inputs: folders, globs and WebDataset tar shards (members decoded by us, never unpickled)."""
from __future__ import annotations

import io
import pickle
import random
import tarfile

import pytest

from mot_lightning.tokenizers import FitData, KMeansImageConfig, KMeansImageTokenizer
from mot_lightning.tokenizers.fit_inputs import iter_items, split
from mot_lightning.tokenizers.media import IMAGE_EXTS, TEXT_EXTS, read_image
from mot_lightning.world.procedural import random_scene, render


def _png(seed: int) -> bytes:
    return render(random_scene(random.Random(seed), held_out=False), 24)


def _write_tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def shard(tmp_path):
    members = {}
    for i in range(6):  # image-caption pairs as img2dataset writes them
        members[f"{i:04d}.png"] = _png(i)
        members[f"{i:04d}.txt"] = f"caption {i}".encode()
    members["0100.json"] = b'{"segments": [{"modality": "image", "file": "img0.png"}]}'  # interleaved
    members["0100.img0.png"] = _png(100)
    members["0101.pth"] = pickle.dumps({"never": "unpickled"})
    members["0102.png"] = b"not a png"  # undecodable: skipped with a warning
    _write_tar(tmp_path / "shard-000.tar", members)
    return tmp_path / "shard-000.tar"


def test_shard_members_are_items_and_bad_ones_are_skipped(shard):
    with pytest.warns(UserWarning, match="skipping 0102.png"):
        images = list(iter_items(str(shard), IMAGE_EXTS, read_image))
    assert [k for k, _ in images] == [f"{i:04d}.png" for i in range(6)] + ["0100.img0.png"]
    assert all(img.shape == (3, 24, 24) for _, img in images)
    texts = list(iter_items(str(shard), TEXT_EXTS, lambda b: b.decode()))
    assert texts[0] == ("0000.txt", "caption 0") and len(texts) == 6


def test_fit_from_shards_and_brace_pattern(shard, tmp_path):
    _write_tar(tmp_path / "shard-001.tar", {f"{i:04d}.jpg": _png(50 + i) for i in range(4)})
    pattern = str(tmp_path / "shard-{000..001}.tar")
    with pytest.warns(UserWarning):
        keys = [k for k, _ in iter_items(pattern, IMAGE_EXTS, read_image)]
    assert len(keys) == 11
    tok = KMeansImageTokenizer(KMeansImageConfig(resolution=16, patch_size=4, codebook_size=8, iters=3))
    with pytest.warns(UserWarning):
        metrics = tok.fit(FitData(str(tmp_path), held_out=0.2))  # a folder of shards
    assert metrics["train_images"] + metrics["held_out_images"] == 11


def test_split_is_deterministic_and_never_empty():
    items = [(f"k{i}", i) for i in range(50)]
    train, held = split(items, 0.2)
    assert split(list(reversed(items)), 0.2)[1] == sorted(held, reverse=True)  # by key, not by order
    assert 3 <= len(held) <= 20 and len(train) + len(held) == 50
    assert len(split(items[:2], 0.01)[1]) == 1
    with pytest.raises(ValueError, match="held_out"):
        split(items[:1], 1.0)


def test_folder_without_data_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="demo-data"):
        list(iter_items(str(tmp_path), IMAGE_EXTS, read_image))
