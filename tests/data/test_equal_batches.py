"""2 ranks (gloo process group) x 2 workers: validation shares of different sizes still give every rank
the same number of batches; the padding batches hold nothing to predict; every document is read once."""

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
import torch, torch.distributed as dist
from tests.data.helpers import make_datamodule, text_of
from mot_lightning.data.sources import SourceConfig
from pathlib import Path

root, out, port = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=int(sys.argv[4]), world_size=2)
val = [SourceConfig("uneven", [str(root / "a.tar"), str(root / "b.tar")])]
dm = make_datamodule(root, None, val_sets=val, num_workers=2, seq_len=64, batch_size=2)
dm.setup("validate")
(equal,) = dm.val_dataloader()

def any_rank(flag):
    t = torch.tensor([int(flag)])
    dist.all_reduce(t)
    return bool(t.item())

equal.any_rank = any_rank
raw = [b for b, _ in equal.loader if b is not None]  # this rank's own batches, unpadded ((batch, counts) pairs)
batches = list(equal)
tags = [t for b in batches for row in b.tokens for t in re.findall(r"doc-\d+", text_of(row, dm.vocab))]
padding = [b for b in batches if (b.targets != -100).sum() == 0]
json.dump({"raw": len(raw), "batches": len(batches), "padded": equal.padded, "tags": tags,
           "padding_rows_pad": all(bool((b.tokens == dm.vocab.pad_id).all()) for b in padding)}, open(out, "w"))
dist.destroy_process_group()
"""


@pytest.mark.multiprocess
def test_every_rank_runs_the_same_number_of_validation_batches(tmp_path):
    # 4 consumers (rank * 2 + worker) split the samples by index: rank 0's are long, rank 1's short
    docs = [{"__key__": f"d{i:04d}", "txt": f"doc-{i:04d} {'many words ' * (4 if i % 4 < 2 else 0)}".encode()}
            for i in range(44)]
    write_tar(str(tmp_path / "a.tar"), docs[:30])
    write_tar(str(tmp_path / "b.tar"), docs[30:])
    port = str(29_500 + os.getpid() % 1000)
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        argv = [str(tmp_path), str(tmp_path / f"r{rank}.json"), port, str(rank)]
        procs.append(start_script(RANK_SCRIPT, argv, env, cwd=REPO))  # python -c RANK_SCRIPT argv, forked
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out[-3000:]
    r0, r1 = (json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(2))
    assert r0["raw"] != r1["raw"], "the shares should differ for this test to mean anything"
    assert r0["batches"] == r1["batches"] == max(r0["raw"], r1["raw"])
    assert r0["padded"] + r1["padded"] == abs(r0["raw"] - r1["raw"])
    assert r0["padding_rows_pad"] and r1["padding_rows_pad"]
    assert sorted(r0["tags"] + r1["tags"]) == [f"doc-{i:04d}" for i in range(44)]
