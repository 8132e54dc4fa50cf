"""The diffusers adapters against the diffusers models run directly, on tiny models built from configs.

No downloads: each model is built with random weights, saved with ``save_pretrained`` into a temp
folder, and the adapter reads that folder. Tiny: two down blocks (d = 2), widths 16/32, 32x32 images
-> a 16x16 latent grid (256 VQ codes per image; 64 KL patches of 4 channels x 2 x 2 = 16).
"""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import yaml
from diffusers import AutoencoderKL, VQModel

from mot_lightning.data.datamodule import MultiModalDataModule
from mot_lightning.data.documents import Document, Segment
from mot_lightning.data.packing import LatentDoc
from mot_lightning.modality import Modality
from mot_lightning.tokenizers import (
    DiffusersKLConfig,
    DiffusersKLTokenizer,
    DiffusersVQConfig,
    DiffusersVQTokenizer,
    TokenizerFileError,
    load_tokenizer,
)
from mot_lightning.tokenizers.files import read_tokenizer_file
from mot_lightning.tokenizers.patches import patchify
from tests.numerics import assert_close

RES, CODES = 32, 64
TINY = {"down_block_types": ("DownEncoderBlock2D",) * 2, "up_block_types": ("UpDecoderBlock2D",) * 2,
        "block_out_channels": (16, 32), "norm_num_groups": 8, "layers_per_block": 1, "sample_size": RES}
DECODER_REDUCTION = 10 * 9 * 32  # ~10 chained 3x3 convs over <= 32 channels behind one output pixel


def _save_vq(folder, codes: int = CODES) -> str:
    torch.manual_seed(0)
    model = VQModel(latent_channels=4, num_vq_embeddings=codes, **TINY)
    model.quantize.embedding.weight.data.normal_()  # spread codes (diffusers inits them near 0) so many are used
    model.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def vq_dir(tmp_path_factory):
    return _save_vq(tmp_path_factory.mktemp("vq"))


@pytest.fixture(scope="module")
def kl_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("kl")
    AutoencoderKL(latent_channels=4, scaling_factor=0.5, shift_factor=0.1, **TINY).save_pretrained(folder)
    return str(folder)


def _images(n: int = 2) -> torch.Tensor:
    """float[n, 3, RES, RES] in [0, 1]: flat-colour squares on a gradient (structure, not noise)."""
    g = torch.Generator().manual_seed(1)
    ramp = torch.linspace(0, 1, RES)
    x = (ramp[None, None, :] * torch.rand(n, 3, 1, 1, generator=g)).expand(n, 3, RES, RES).clone()
    for i in range(n):
        x[i, :, 4 + 3 * i:20 + 3 * i, 8:24] = torch.rand(3, 1, 1, generator=g)
    return x


def test_vq_codes_and_reconstruction_match_diffusers(vq_dir):
    tok = DiffusersVQTokenizer(DiffusersVQConfig(path=vq_dir, resolution=RES))
    assert tok.vocab_size == CODES and tok.num_tokens(None) == (RES // 2) ** 2
    images = _images()
    ids = tok.encode(images)
    assert ids.dtype == torch.long and ids.shape == (2, 256)
    assert 0 <= int(ids.min()) and int(ids.max()) < CODES and ids.unique().numel() > 4

    twin = VQModel.from_pretrained(vq_dir, local_files_only=True).eval()
    with torch.no_grad():
        _, _, (_, _, ref_ids) = twin.quantize(twin.encode(images * 2 - 1).latents)
        ref = ((twin(images * 2 - 1).sample + 1) / 2).clamp(0, 1)
    assert torch.equal(ids, ref_ids.view(2, -1))  # same kernels, same inputs: the model's own quantizer
    recon = tok.decode(ids)
    assert recon.dtype == torch.float32 and recon.shape == images.shape
    assert_close(recon, ref, reduction=DECODER_REDUCTION)

    one = tok.encode(images[0])  # one image in, one sequence out
    assert one.shape == (256,) and tok.decode(one).shape == (3, RES, RES)
    with pytest.raises(ValueError, match="must lie in"):
        tok.decode(torch.full((1, 256), CODES))


def test_kl_latents_in_the_app_patch_layout_and_reconstruction_match_diffusers(kl_dir):
    tok = DiffusersKLTokenizer(DiffusersKLConfig(path=kl_dir, resolution=RES, patch_size=2))
    assert (tok.scaling, tok.shift) == (0.5, 0.1)  # the model's own factors by default
    assert tok.latent_dim == 16 and tok.num_tokens(None) == 64
    images = _images()
    latents = tok.encode(images)
    assert latents.dtype == torch.float32 and latents.shape == (2, 64, 16)

    twin = AutoencoderKL.from_pretrained(kl_dir, local_files_only=True).eval()
    with torch.no_grad():
        mean = twin.encode(images * 2 - 1).latent_dist.mean  # (2, 4, 16, 16)
        ref = ((twin.decode(mean).sample + 1) / 2).clamp(0, 1)
    z = (mean - 0.1) * 0.5
    assert_close(latents, patchify(z, 2), reduction=1)
    # row-major patches, channels then pixels inside a patch: patch (i, j) = z[:, :, 2i:2i+2, 2j:2j+2]
    assert_close(latents[1, 3 * 8 + 5], z[1, :, 6:8, 10:12].reshape(-1), reduction=1)
    recon = tok.decode(latents)
    assert recon.dtype == torch.float32 and recon.shape == images.shape
    assert_close(recon, ref, reduction=DECODER_REDUCTION)

    unscaled = DiffusersKLTokenizer(DiffusersKLConfig(path=kl_dir, resolution=RES, scaling_factor=1.0,
                                                      shift_factor=0.0))
    assert_close(unscaled.encode(images), patchify(mean, 2), reduction=1)
    with pytest.raises(ValueError, match=r"\[B, 64, 16\]"):
        tok.decode(torch.zeros(1, 16, 16))


DATA_YAML = """
data:
  text_tokenizer:
    class_path: mot_lightning.tokenizers.text.ByteTokenizer
  image_tokenizer:
    class_path: mot_lightning.tokenizers.{cls}
    init_args:
      config: {{path: {path}, resolution: {res}}}
"""


def _datamodule(cls: str, path: str) -> MultiModalDataModule:
    return MultiModalDataModule.from_data_section(yaml.safe_load(DATA_YAML.format(cls=cls, path=path, res=RES))["data"])


def test_vq_adapter_by_class_path_gives_joint_ids(vq_dir):
    dm = _datamodule("DiffusersVQTokenizer", vq_dir)
    tok, image = dm.encoder.tokenizers[Modality.IMAGE], _images(1)[0]
    assert isinstance(tok, DiffusersVQTokenizer) and dm.image_size == RES and dm.latent_dim == 0
    doc = dm.encoder.encode(Document("k", [Segment(Modality.TEXT, "a square"), Segment(Modality.IMAGE, image)]))
    assert doc.dtype == torch.long and doc.shape == (1 + 8 + 1 + 256 + 1 + 1,)  # BOS text BOI codes EOI EOS
    v = dm.vocab
    assert int(doc[9]) == v.boi_id and int(doc[-2]) == v.eoi_id
    assert torch.equal(doc[10:-2], v.to_joint(tok.encode(image), Modality.IMAGE))
    assert v.range(Modality.IMAGE)[1] - v.range(Modality.IMAGE)[0] == CODES


def test_kl_adapter_by_class_path_gives_latent_docs(kl_dir):
    dm = _datamodule("DiffusersKLTokenizer", kl_dir)
    tok, image = dm.encoder.tokenizers[Modality.IMAGE], _images(1)[0]
    assert isinstance(tok, DiffusersKLTokenizer) and dm.latent_dim == 16 and dm.image_size == RES
    doc = dm.encoder.encode(Document("k", [Segment(Modality.IMAGE, image), Segment(Modality.TEXT, "hi")]))
    assert isinstance(doc, LatentDoc) and doc.latents.dtype == torch.float32
    assert doc.latents.shape == (1 + 1 + 64 + 1 + 2 + 1, 16)  # BOS BOI patches EOI text EOS
    span = slice(2, 2 + 64)
    assert bool((doc.ids[span] == dm.vocab.latent_id).all())
    assert torch.equal(doc.latents[span], tok.encode(image))  # same call, same process
    assert not doc.latents[:2].any() and not doc.latents[66:].any()  # zero rows outside the image


def test_missing_or_wrong_folder_fails_naming_the_path(tmp_path, vq_dir, kl_dir):
    missing = tmp_path / "no-such-vae"
    with pytest.raises(FileNotFoundError, match=r"no-such-vae.*save_pretrained"):
        DiffusersKLTokenizer(DiffusersKLConfig(path=str(missing)))
    with pytest.raises(FileNotFoundError, match=r"vqvae.*subfolder"):
        DiffusersVQTokenizer(DiffusersVQConfig(path=vq_dir, subfolder="vqvae"))
    with pytest.raises(ValueError, match="describes a VQModel, not a AutoencoderKL"):
        DiffusersKLTokenizer(DiffusersKLConfig(path=vq_dir, resolution=RES))
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    (config_only / "config.json").write_text((Path(vq_dir) / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="config-only.*no weights"):
        DiffusersVQTokenizer(DiffusersVQConfig(path=str(config_only), resolution=RES))
    with pytest.raises(ValueError, match="multiple of 4"):  # d = 2 times patch_size 2
        DiffusersKLTokenizer(DiffusersKLConfig(path=kl_dir, resolution=30))


def test_tokenizer_file_points_at_the_folder_and_refuses_a_changed_model(tmp_path):
    folder = _save_vq(tmp_path / "vq")
    tok = DiffusersVQTokenizer(DiffusersVQConfig(path=folder, resolution=RES))
    file = tmp_path / "image.pt"
    tok.save(str(file))
    payload = read_tokenizer_file(file, "DiffusersVQTokenizer")
    assert payload["state"] == {} and payload["config"]["path"] == folder  # a pointer, no weights
    loaded = load_tokenizer(file)
    assert isinstance(loaded, DiffusersVQTokenizer)
    images = _images()
    assert torch.equal(loaded.encode(images), tok.encode(images))

    copy = pickle.loads(pickle.dumps(tok))  # DataLoader workers: no weights pickled, reloaded from the folder
    assert copy._model is None and torch.equal(copy.encode(images), tok.encode(images))

    _save_vq(tmp_path / "vq", codes=2 * CODES)  # the folder now holds another model
    with pytest.raises(TokenizerFileError, match="point config.path at the model"):
        load_tokenizer(file)
