from __future__ import annotations

import pytest
import torch

from mot_lightning.tokenizers import (
    KLVAE,
    FitData,
    KLVAEConfig,
    LatentImageTokenizer,
    TokenizerFileError,
    TrainConfig,
)
from mot_lightning.tokenizers.files import read_tokenizer_file
from mot_lightning.tokenizers.image_common import load_images, to_float

TINY = KLVAEConfig(resolution=16, downsample=4, channels=8, res_blocks=0, latent_channels=4, patch_size=2)


@pytest.fixture(scope="module")
def vae(demo_dirs, tmp_path_factory):
    tok = LatentImageTokenizer(TINY)
    train = TrainConfig(max_steps=60, batch_size=16, lr=3e-3, warmup_steps=5, val_every_n_steps=60,
                        accelerator="cpu", log_dir=str(tmp_path_factory.mktemp("tb")), progress_bar=False)
    return tok, tok.fit(FitData(str(demo_dirs["images"]), held_out=0.15), train)


@pytest.mark.slow
def test_latents_shape_scale_and_round_trip(vae, demo_dirs):
    tok, metrics = vae
    assert tok.latent_dim == 16 and tok.num_tokens() == 4
    z = tok.encode(min(demo_dirs["images"].glob("*.png")))
    assert z.shape == (4, 16) and z.dtype == torch.float32
    assert tok.decode(z).shape == (3, 16, 16)
    # latent_scale makes training latents unit-variance, as a diffusion head expects
    files = sorted(demo_dirs["images"].glob("*.png"))[:20]
    assert 0.5 < float(torch.stack([tok.encode(f) for f in files]).std()) < 2.0
    # a 60-step toy: encode(decode(z)) within 80% relative L2 of z (the CPU config's figure is in
    # benchmarks/README.md); an untrained VAE does worse on both counts
    untrained = LatentImageTokenizer(TINY)
    untrained.model = KLVAE(TINY).eval()
    _, held = load_images(FitData(str(demo_dirs["images"]), held_out=0.15), 16)
    before = untrained.evaluate(to_float(held))
    assert metrics["latent_roundtrip_rel_error"] < min(0.8, before["latent_roundtrip_rel_error"])
    assert metrics["psnr"] > before["psnr"] + 2.0


@pytest.mark.slow
def test_save_load_identical_and_damaged_weights(vae, demo_dirs, tmp_path):
    tok, _ = vae
    tok.save(str(tmp_path / "vae.pt"))
    loaded = LatentImageTokenizer.load(str(tmp_path / "vae.pt"))
    f = min(demo_dirs["images"].glob("*.png"))
    assert torch.equal(loaded.encode(f), tok.encode(f))
    payload = read_tokenizer_file(tmp_path / "vae.pt")
    state = dict(payload["state"])
    state.pop(next(iter(state)))
    torch.save(payload | {"state": state}, tmp_path / "damaged.pt")
    with pytest.raises(TokenizerFileError, match="weights do not match"):
        LatentImageTokenizer.load(str(tmp_path / "damaged.pt"))
    with pytest.raises(ValueError, match="latents of shape"):
        tok.decode(torch.zeros(5, 16))
