"""Under DDP every rank must keep the same codebook (statistics summed, restarts broadcast from rank 0)."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from mot_lightning.tokenizers.vqvae import VectorQuantizerEMA
from tests.processes import spawn


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(100 + rank)  # different data and different random picks on each rank
    q = VectorQuantizerEMA(codebook_size=16, dim=4, decay=0.9, restart_every=3).train()
    for _ in range(12):
        q(torch.randn(2, 4, 5, 5) + 3 * rank)
    torch.save({"codebook": q.codebook, "restarts": q.restarts}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_codebooks_stay_identical_across_ranks(tmp_path):
    spawn(_worker, args=(2, 29500 + os.getpid() % 1000, str(tmp_path)), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.equal(r0["codebook"], r1["codebook"])
    assert r0["restarts"] == r1["restarts"] > 0
