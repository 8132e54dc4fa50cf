from __future__ import annotations

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mot_lightning.tokenizers import (
    VQVAE,
    FitData,
    TrainConfig,
    VectorQuantizerEMA,
    VQImageTokenizer,
    VQVAEConfig,
)
from mot_lightning.tokenizers.image_common import load_images, to_float

BLOBS = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])


def _blob_batch(g: torch.Generator, n: int = 256) -> torch.Tensor:
    """float[1, 2, n, 1]: points around 4 centres, laid out as a (B, D, h, w) feature map."""
    x = BLOBS[torch.randint(4, (n,), generator=g)] + 0.5 * torch.randn(n, 2, generator=g)
    return x.T[None, :, :, None]


def _usage_after_dead_codes(restart_every: int) -> tuple[int, VectorQuantizerEMA]:
    g = torch.Generator().manual_seed(0)
    q = VectorQuantizerEMA(codebook_size=8, dim=2, decay=0.9, restart_every=restart_every).train()
    q(_blob_batch(g))  # first step: codebook initialised from the data (then one EMA step)
    assert q.codebook.min() > -3 and q.codebook.max() < 13  # inside the data, not at randn init
    q.codebook[:4] += 1000.0  # kill half the codebook
    q.ema_sum[:4] = q.codebook[:4] * q.ema_count[:4, None]
    for _ in range(30):
        q(_blob_batch(g))
    q.eval()
    ids = q(_blob_batch(g, 2000))[1]
    return int(torch.bincount(ids.flatten(), minlength=8).gt(0).sum()), q


def test_dead_codes_are_restarted_and_used_again():
    used_with, q = _usage_after_dead_codes(restart_every=5)
    used_without, _ = _usage_after_dead_codes(restart_every=10_000)  # twin without restarts
    assert used_without <= 4  # the killed codes never come back on their own
    assert used_with >= 7 and q.restarts >= 4
    assert torch.cdist(q.codebook, BLOBS).min(1).values.max() < 5.0  # all codes back among the data


def test_ema_codes_converge_to_the_mean_of_their_vectors_and_straight_through_grad():
    g = torch.Generator().manual_seed(1)
    q = VectorQuantizerEMA(codebook_size=6, dim=2, decay=0.8, restart_every=5).train()
    losses = [float(q(_blob_batch(g))[2]) for _ in range(60)]
    assert losses[-1] < losses[0]
    x = _blob_batch(g, 4000)
    ids = q.eval()(x)[1].flatten()
    flat = x[0, :, :, 0].T  # (N, 2)
    for k in ids.unique():  # k-means fixed point: each code sits at the mean of the vectors it wins
        assert torch.dist(flat[ids == k].mean(0), q.codebook[k]) < 0.3
    z = _blob_batch(g).requires_grad_(True)
    out, ids, _ = q.eval()(z)
    out.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))  # straight-through: gradient passes unchanged
    assert torch.allclose(out.detach()[0, :, :, 0].T, q.codebook[ids.flatten()], atol=1e-5)


TINY = VQVAEConfig(resolution=16, downsample=4, channels=8, res_blocks=0, codebook_size=32, code_dim=8,
                   restart_every=10)


@pytest.fixture(scope="module")
def vq(demo_dirs, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("tb")
    tok = VQImageTokenizer(TINY)
    train = TrainConfig(max_steps=60, batch_size=16, lr=3e-3, warmup_steps=5, val_every_n_steps=30,
                        accelerator="cpu", log_dir=str(log_dir), run_name="vq", progress_bar=False)
    metrics = tok.fit(FitData(str(demo_dirs["images"]), held_out=0.15), train)
    return tok, metrics, log_dir


@pytest.mark.slow
def test_vqvae_trains_reconstructs_and_logs_to_tensorboard(vq, demo_dirs):
    _, metrics, log_dir = vq
    _, held = load_images(FitData(str(demo_dirs["images"]), held_out=0.15), 16)
    untrained = VQImageTokenizer(TINY)
    untrained.model = VQVAE(TINY).eval()
    # a 60-step toy only shows that training works; the quality figures come from the CPU config
    # (configs/tokenizers/vqvae_image.yaml, numbers in benchmarks/README.md)
    assert metrics["psnr"] > untrained.evaluate(to_float(held))["psnr"] + 2.0
    assert metrics["codebook_usage"] > 0.5 and metrics["codes_restarted"] > 0
    events = EventAccumulator(str(next(log_dir.rglob("events.out.tfevents*")).parent))
    events.Reload()
    assert {"val/psnr", "val/codebook_usage", "train/recon_mse", "train/perplexity"} <= set(events.Tags()["scalars"])
    assert "val/reconstructions" in events.Tags()["images"]


@pytest.mark.slow
def test_vqvae_encode_decode_save_load(vq, demo_dirs, tmp_path):
    tok, _, _ = vq
    files = sorted(demo_dirs["images"].glob("*.png"))[:4]
    ids = tok.encode(files[0])
    assert ids.shape == (16,) == (tok.num_tokens(files[0]),) and int(ids.max()) < tok.vocab_size
    assert tok.decode(ids).shape == (3, 16, 16)
    batch = torch.stack([tok.decode(tok.encode(f)) for f in files])
    assert torch.equal(tok.encode(batch), torch.stack([tok.encode(b) for b in batch]))  # batch == one by one
    tok.save(str(tmp_path / "vq.pt"))
    loaded = VQImageTokenizer.load(str(tmp_path / "vq.pt"))
    for f in files:
        assert torch.equal(loaded.encode(f), tok.encode(f))
    assert torch.equal(loaded.decode(ids), tok.decode(ids))
    with pytest.raises(ValueError, match="ids must lie"):
        tok.decode(torch.full((16,), 32))
    with pytest.raises(RuntimeError, match="not fitted"):
        VQImageTokenizer(TINY).encode(files[0])
