"""2 ranks x 2 DataLoader workers as real processes: disjoint samples, equal batch counts per rank."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.processes import start_script

from .helpers import write_tar

REPO = Path(__file__).resolve().parents[2]

RANK_SCRIPT = r"""
import json, re, sys
from tests.data.helpers import make_datamodule, text_of
from mot_lightning.data.sources import SourceConfig
from pathlib import Path

root, out = Path(sys.argv[1]), sys.argv[2]
train = [SourceConfig("sharded", str(root / "text-{000000..000007}.tar"))]
val = [SourceConfig("sharded", str(root / "text-{000000..000007}.tar")), SourceConfig("single", str(root / "one.tar"))]
dm = make_datamodule(root, train, val_sets=val, num_workers=2, seq_len=64, batch_size=2,
                     train_batches_per_epoch=6, shuffle_buffer=4)
dm.setup("fit")
tags = lambda batches: [t for b in batches for row in b.tokens for t in re.findall(r"doc-\d+", text_of(row, dm.vocab))]
train_batches = list(dm.train_dataloader())
result = {"train_batches": len(train_batches), "train_tags": tags(train_batches),
          "val": {name: tags(list(loader)) for name, loader in zip(dm.val_set_names, dm.val_dataloader())}}
json.dump(result, open(out, "w"))
"""


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_ranks_two_workers_read_disjoint_samples(tmp_path):
    docs = [{"__key__": f"d{i:04d}", "txt": f"doc-{i:04d} some words".encode()} for i in range(64)]
    for s in range(8):
        write_tar(str(tmp_path / f"text-{s:06d}.tar"), docs[s::8])
    write_tar(str(tmp_path / "one.tar"), docs[:32])  # fewer shards than consumers: split by sample index
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "PYTHONPATH": str(REPO)}
        argv = [str(tmp_path), str(tmp_path / f"rank{rank}.json")]
        procs.append(start_script(RANK_SCRIPT, argv, env, cwd=REPO))  # python -c RANK_SCRIPT argv, forked
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))

    assert r0["train_batches"] == r1["train_batches"] == 6
    assert r0["train_tags"] and r1["train_tags"]
    assert not set(r0["train_tags"]) & set(r1["train_tags"]), "ranks must train on disjoint samples"
    for name, n in (("sharded", 64), ("single", 32)):
        a, b = r0["val"][name], r1["val"][name]
        assert len(a) == len(set(a)) and len(b) == len(set(b)), f"{name}: a rank read a sample twice"
        assert not set(a) & set(b), f"{name}: ranks overlap"
        assert sorted(a + b) == sorted(f"doc-{i:04d}" for i in range(n)), f"{name}: samples lost"
        assert abs(len(a) - len(b)) <= 1
