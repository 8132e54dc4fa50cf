"""Gradient clipping under every strategy (``training/grad_clip.py``): DDP and FSDP2 on 2 CPU processes
clip the same total norm as one process on the same global batch and end at the same weights; raw FSDP1
(2 gloo processes) clips through its root; value clipping; and, on a GPU, Lightning's FSDP1 strategy with
``gradient_clip_val`` (which its precision plugin refuses on its own)."""
from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from mot_lightning.data.batch import IGNORE_INDEX
from mot_lightning.model import TransformerConfig
from mot_lightning.model.lm import TokenLM
from mot_lightning.training import clip_gradients
from tests.app.controls_run import launch_env
from tests.app.distributed_runs import finish
from tests.app.fixed_batches import ROWS, VOCAB, T, train
from tests.numerics import assert_close, tolerance, transformer_reduction
from tests.objectives.batches import token_batch
from tests.processes import free_port, spawn, start_module

ROOT = Path(__file__).resolve().parents[2]
CLIP = 0.05  # well below the norms of this model (0.8-0.9): every step clips
# float64 training: the splits differ by summation order only (~1e-16 per operation), which Adam's
# normalisation may magnify in its smallest moments; a real bug (clipping before the gradients are
# reduced, a shard's norm taken for the whole) moves weights by the clipped update, ~1e-3.
WEIGHT_TOL = 1e-10


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("one") / "run.pt"
    train(out, clip=CLIP)
    return torch.load(out)


def run_ranks(tmp_path: Path, strategy: str) -> dict:
    out = tmp_path / f"{strategy}.pt"
    finish(start_module("tests.app.fixed_batches", ["--strategy", strategy, "--devices", "2", "--clip", str(CLIP),
                                                    "--out", str(out)], nprocs=2, env=launch_env(), cwd=ROOT))
    return torch.load(out)


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_processes_clip_the_norm_of_one(strategy, one_process, tmp_path):
    ranks = run_ranks(tmp_path, strategy)
    norms, expected = ranks["metrics"]["train/grad_norm"], one_process["metrics"]["train/grad_norm"]
    assert sorted(norms) == [0, 1, 2]  # one pre-clip norm per optimizer step
    for step, norm in expected.items():
        assert norm > 10 * CLIP  # clipping is active
        assert norms[step] == pytest.approx(norm, rel=1e-6), step  # logged as float32
    assert ranks["weights"].keys() == one_process["weights"].keys()
    for name, w in one_process["weights"].items():
        assert w.dtype == torch.float64
        torch.testing.assert_close(ranks["weights"][name], w, rtol=WEIGHT_TOL, atol=WEIGHT_TOL, msg=name)


CFG = TransformerConfig(dim=32, n_layers=2, n_heads=4, n_modalities=3, sparsity="mot")
# float32 (FSDP1's clip_grad_norm_ takes no float64): the two sides differ by the order of their sums;
# a weight's gradient sums over every position of the global batch
REDUCTION = transformer_reduction(CFG.n_layers, CFG.dim, CFG.ffn_hidden, ROWS * T)


def tiny_lm(dtype: torch.dtype = torch.float64) -> TokenLM:
    torch.manual_seed(0)
    return TokenLM(CFG, VOCAB).to(dtype)


def batch_loss(net: torch.nn.Module, start: int, stop: int) -> torch.Tensor:
    """Mean next-token CE of rows [start, stop) of the global batch (every row: equal target counts)."""
    b = token_batch(B=ROWS, T=T, V=VOCAB, seed=0)
    logits = net(b.tokens[start:stop], b.modality[start:stop], positions=b.positions[start:stop],
                 doc_ids=b.doc_ids[start:stop])
    return F.cross_entropy(logits.flatten(0, 1), b.targets[start:stop].flatten(), ignore_index=IGNORE_INDEX)


def _fsdp1_rank(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    _fsdp1_clip(rank, out)
    dist.barrier()
    gc.collect()  # the FSDP module (it holds the process group) is gone before the group is destroyed
    dist.destroy_process_group()


def _fsdp1_clip(rank: int, out: str) -> None:
    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy

    root = FullyShardedDataParallel(tiny_lm(torch.float32), device_id=torch.device("cpu"),
                                    use_orig_params=True, sharding_strategy=ShardingStrategy.FULL_SHARD)
    half = ROWS // 2
    batch_loss(root, rank * half, (rank + 1) * half).backward()  # FSDP averages the ranks' gradients
    norm = clip_gradients(root, root.parameters(), CLIP)
    with FullyShardedDataParallel.summon_full_params(root, with_grads=True):
        grads = {n: p.grad.detach().clone() for n, p in root.named_parameters()}
    if rank == 0:
        torch.save({"norm": norm, "grads": grads}, out)


@pytest.mark.multiprocess
def test_fsdp1_clips_through_its_sharded_root(tmp_path):
    """Raw FSDP1 (FULL_SHARD, 2 gloo processes): each rank holds half of every flat gradient, so only the
    root's ``clip_grad_norm_`` sees the total norm; a shard's own norm would differ per rank."""
    net = tiny_lm(torch.float32)
    batch_loss(net, 0, ROWS).backward()
    expected_norm = clip_gradients(net, net.parameters(), CLIP)
    expected = {n: p.grad for n, p in net.named_parameters()}
    port = free_port()
    spawn(_fsdp1_rank, args=(port, str(tmp_path / "fsdp1.pt")), nprocs=2)
    got = torch.load(tmp_path / "fsdp1.pt")
    assert expected_norm > 10 * CLIP
    assert float(got["norm"]) == pytest.approx(float(expected_norm), rel=tolerance(torch.float32, REDUCTION))
    names = {n.replace("_fsdp_wrapped_module.", "") for n in got["grads"]}
    assert names == set(expected)
    for name, g in got["grads"].items():
        assert_close(g, expected[name.replace("_fsdp_wrapped_module.", "")], reduction=REDUCTION, msg=name)
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in expected.values()]))
    assert float(total) == pytest.approx(CLIP, rel=1e-5)  # clipped to the limit


def test_value_clipping_clamps_elements_and_reports_the_norm_before():
    net = tiny_lm()
    batch_loss(net, 0, ROWS).backward()
    before = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in net.parameters()]))
    norm = clip_gradients(net, net.parameters(), 1e-3, "value")
    assert float(norm) == pytest.approx(float(before), rel=1e-6)
    assert max(float(p.grad.abs().max()) for p in net.parameters()) == pytest.approx(1e-3)
    assert float(clip_gradients(net, net.parameters(), None)) < float(before)  # measures only: clamped


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_lightning_fsdp1_with_gradient_clipping_trains(tmp_path):
    """The documented paper-size recipe (FSDPStrategy, bf16-mixed, gradient_clip_val 1.0) runs its steps."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.strategies import FSDPStrategy

    from mot_lightning.lit_module import MultiModalLM
    from mot_lightning.model.block import Block
    from tests.app.fixed_batches import FixedBatches, adamw, logged

    pl.seed_everything(0)
    cfg = TransformerConfig(dim=32, n_layers=2, n_heads=4, n_modalities=3, sparsity="mot")
    model = MultiModalLM(backbone=cfg, vocab_size=VOCAB, optimizer=adamw)
    trainer = pl.Trainer(accelerator="gpu", devices=1, strategy=FSDPStrategy(auto_wrap_policy={Block}),
                         precision="bf16-mixed", max_steps=3, gradient_clip_val=CLIP,
                         logger=CSVLogger(tmp_path), log_every_n_steps=1, enable_checkpointing=False,
                         enable_progress_bar=False, use_distributed_sampler=False, limit_val_batches=0)
    trainer.fit(model, datamodule=FixedBatches(3, 1))
    norms = logged(Path(trainer.logger.log_dir) / "metrics.csv")["train/grad_norm"]
    assert sorted(norms) == [0, 1, 2] and all(n > CLIP for n in norms.values())
