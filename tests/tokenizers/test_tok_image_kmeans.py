from __future__ import annotations

import random

import pytest
import torch
from PIL import Image

from mot_lightning.tokenizers import KMeansImageConfig, KMeansImageTokenizer
from mot_lightning.tokenizers.image_common import mean_psnr
from mot_lightning.tokenizers.kmeans import kmeans, nearest
from mot_lightning.tokenizers.media import prepare_image
from mot_lightning.tokenizers.patches import patchify, unpatchify
from mot_lightning.world.procedural import random_scene, render_image


def test_kmeans_recovers_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0], [5.0, -5.0]])
    x = (centers[:, None] + 0.1 * torch.randn(4, 50, 2, generator=g)).reshape(-1, 2)
    found = kmeans(x, 4, iters=20, seed=0)
    assert torch.cdist(centers, found).min(1).values.max() < 0.1
    assert torch.equal(kmeans(x, 4, seed=0), found)  # seeded: deterministic
    with pytest.raises(ValueError, match="lower codebook_size"):
        kmeans(x[:3], 4)


def test_nearest_matches_bruteforce_twin():
    x, c = torch.randn(300, 12), torch.randn(40, 12)
    assert torch.equal(nearest(x, c, chunk=64), torch.cdist(x, c).argmin(1))


def test_patchify_unpatchify_inverse():
    x = torch.randn(2, 3, 8, 12)
    p = patchify(x, 4)
    assert p.shape == (2, 6, 48)
    assert torch.equal(p[0, 1], x[0, :, 0:4, 4:8].reshape(-1))  # row-major patch order, channels first
    assert torch.equal(unpatchify(p, 4, 3, 8, 12), x)


def test_fit_reconstructs_held_out_images(kmeans_image):
    tok, metrics = kmeans_image
    # stated: > 24 dB PSNR on held-out 32x32 demo-world renders (64 tokens, 128 codes, fitted on 46 renders;
    # 25.7 dB measured, 25.3 on the fresh renders below; flat shapes on dark, partly graded backgrounds: the
    # anti-aliased edges are what costs)
    assert metrics["held_out_images"] >= 10 and metrics["psnr"] > 24
    rng = random.Random(123)  # fresh renders never seen in fitting
    scenes = [random_scene(rng, held_out=False) for _ in range(8)]
    imgs = torch.stack([prepare_image(render_image(scene, 48), 32) for scene in scenes])
    ids = tok.encode(imgs)
    assert ids.shape == (8, 64) and ids.dtype == torch.long
    assert mean_psnr(tok.decode(ids), imgs) > 24
    flat = mean_psnr(imgs.mean((2, 3), keepdim=True).expand_as(imgs), imgs)  # each image's mean colour: 18 dB
    assert mean_psnr(tok.decode(ids), imgs) > flat + 6


def test_single_and_batch_paths_agree_and_inputs_of_any_form(kmeans_image, demo_dirs):
    tok, _ = kmeans_image
    path = demo_dirs["images"] / "img00003.png"
    img = prepare_image(path, 32)
    single = tok.encode(path)
    assert single.shape == (tok.num_tokens(path),) and 0 <= int(single.min()) and int(single.max()) < tok.vocab_size
    assert torch.equal(single, tok.encode(Image.open(path)))
    assert torch.equal(single, tok.encode(img))
    assert torch.equal(single, tok.encode(img[None])[0])
    assert torch.equal(tok.decode(single), tok.decode(single[None])[0])
    # grayscale, RGBA, odd-sized inputs all give a full token grid
    for im in (Image.open(path).convert("L"), Image.open(path).convert("RGBA"), Image.open(path).resize((37, 23))):
        assert tok.encode(im).shape == (64,)


def test_save_load_bit_identical_and_bad_ids(kmeans_image, demo_dirs, tmp_path):
    tok, _ = kmeans_image
    tok.save(str(tmp_path / "km.pt"))
    loaded = KMeansImageTokenizer.load(str(tmp_path / "km.pt"))
    for f in sorted(demo_dirs["images"].glob("*.png"))[:5]:
        assert torch.equal(loaded.encode(f), tok.encode(f))
    with pytest.raises(ValueError, match="ids must lie"):
        tok.decode(torch.full((64,), tok.vocab_size))
    with pytest.raises(ValueError, match="shape"):
        tok.decode(torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        KMeansImageConfig(resolution=30, patch_size=4)
