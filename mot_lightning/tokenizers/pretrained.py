"""Pretrained image autoencoders from ``diffusers``, read from a local folder, as image tokenizers.

- ``DiffusersVQTokenizer``: a ``diffusers.VQModel`` (a VQGAN such as Chameleon's kind of tokenizer)
  -> discrete codes ``long[(R/d)^2]``, one per latent cell, row-major (a ``DiscreteTokenizer``).
- ``DiffusersKLTokenizer``: a ``diffusers.AutoencoderKL`` (an SD-class VAE, Transfusion's kind)
  -> latent patches ``float[(R/d/p)^2, C * p * p]`` in the app's layout (``patches.patchify``), like
  ``LatentImageTokenizer`` (a ``ContinuousTokenizer``).

Both need the optional extra: ``pip install 'mot_lightning[pretrained]'``. Weights are only ever read
from a local folder written by ``save_pretrained`` (``config.json`` + ``diffusion_pytorch_model.*``)
with ``local_files_only=True``: nothing is downloaded. To use weights you have, save them once on a
machine that has them, e.g. ``AutoencoderKL.from_pretrained("<hub id or folder>").save_pretrained(
"/models/sd-vae")`` (or point ``subfolder: vae`` at a whole pipeline folder), then in YAML::

    data:
      image_tokenizer:
        class_path: mot_lightning.tokenizers.DiffusersKLTokenizer
        init_args:
          config: {path: /models/sd-vae, resolution: 256, patch_size: 2}

Construction reads only ``config.json`` (cheap; it checks the folder and the model class); the
weights load on first use, in whichever process encodes (each DataLoader worker loads its own copy).

Tokenizer files: ``save`` writes a tokenizer file (tokenizers/files.py) with the config (the folder
path, resolution, ...) and the model's shape-defining settings, and no weights; ``load`` re-opens the
weights from the recorded path and refuses a folder whose model no longer matches what was recorded.
The file is a pointer: moving or changing the folder breaks it, on purpose, loudly (a relative
``config.path`` is read relative to the working directory).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mot_lightning.modality import Modality
from mot_lightning.tokenizers.base import ContinuousTokenizer, DiscreteTokenizer, TokenizerFileError
from mot_lightning.tokenizers.files import config_from_payload, read_tokenizer_file, save_tokenizer_file
from mot_lightning.tokenizers.image_common import ImageBatchCodec
from mot_lightning.tokenizers.patches import patchify, unpatchify

INSTALL_HINT = "install the optional extra: pip install 'mot_lightning[pretrained]' (or 'diffusers>=0.30')"


@dataclass
class DiffusersVQConfig:
    path: str  # local folder written by VQModel.save_pretrained (config.json + weights)
    resolution: int = 256  # images are resized (shorter side) and centre-cropped to R x R
    subfolder: str | None = None  # the model inside a pipeline folder, e.g. "vqvae" or "movq"
    variant: str | None = None  # weights variant, e.g. "fp16" for diffusion_pytorch_model.fp16.safetensors


@dataclass
class DiffusersKLConfig:
    path: str  # local folder written by AutoencoderKL.save_pretrained (config.json + weights)
    resolution: int = 256  # images are resized (shorter side) and centre-cropped to R x R
    patch_size: int = 2  # latent patch per position: latent_dim = latent_channels * patch_size^2
    scaling_factor: float | None = None  # latents = (mean - shift) * scaling; None: the model's own (SD: 0.18215)
    shift_factor: float | None = None  # None: the model's own, or 0 when it has none
    subfolder: str | None = None  # the model inside a pipeline folder, e.g. "vae"
    variant: str | None = None  # weights variant, e.g. "fp16"


def _diffusers() -> Any:
    try:
        import diffusers
    except ImportError as err:
        raise ImportError(f"the diffusers image tokenizers need diffusers: {INSTALL_HINT}") from err
    return diffusers


def read_model_config(path: str, subfolder: str | None, class_name: str) -> dict[str, Any]:
    """The ``config.json`` of a diffusers model folder; every problem raises a ``FileNotFoundError`` or
    ``ValueError`` naming the folder and the fix (nothing is ever fetched from a hub)."""
    folder = Path(path) / (subfolder or "")
    file = folder / "config.json"
    if not file.is_file():
        raise FileNotFoundError(
            f"no diffusers {class_name} at {str(folder)!r} (looked for {str(file)!r}). Set config.path to a "
            f"local folder written by {class_name}.save_pretrained(...) (add config.subfolder for a pipeline "
            f"folder); hubs are never contacted, so copy the weights to this machine first"
        )
    if not any(folder.glob("diffusion_pytorch_model*")):
        raise FileNotFoundError(f"{str(folder)!r} has a config.json but no weights (diffusion_pytorch_model.*): "
                                f"re-save the model there with {class_name}.save_pretrained(...)")
    config = json.loads(file.read_text())
    found = config.get("_class_name")
    if found != class_name:
        raise ValueError(f"{str(file)!r} describes a {found}, not a {class_name}: use the adapter for {found} "
                         f"or point config.path at a {class_name} folder")
    return config


def downsample_of(model_config: dict[str, Any]) -> int:
    """Spatial reduction of a diffusers Encoder: every down block but the last halves the grid."""
    return 2 ** (len(model_config["block_out_channels"]) - 1)


class _DiffusersImageTokenizer(ImageBatchCodec):
    """Shared: folder checks in ``__init__``, lazy weights, device moves, pointer-file save/load."""

    modality = Modality.IMAGE
    class_name: str  # the diffusers class of the folder
    config_class: type
    shape_keys: tuple[str, ...]  # model settings the encodings depend on, recorded in tokenizer files

    def __init__(self, config: Any) -> None:
        self.config = config
        self.model_config = read_model_config(config.path, config.subfolder, self.class_name)
        self.downsample = downsample_of(self.model_config)
        self.side = config.resolution // self.downsample  # latent grid is side x side
        unit = self.downsample * getattr(config, "patch_size", 1)
        if config.resolution % unit:
            raise ValueError(f"config.resolution {config.resolution} must be a multiple of {unit} (the model's "
                             f"downsampling {self.downsample} x patch_size) for {config.path!r}")
        self._model: torch.nn.Module | None = None
        self._device = torch.device("cpu")

    @property
    def model(self) -> torch.nn.Module:
        """The diffusers model, loaded from ``config.path`` on first use (float32, eval mode)."""
        if self._model is None:
            cls = getattr(_diffusers(), self.class_name)
            c = self.config
            self._model = cls.from_pretrained(c.path, subfolder=c.subfolder, variant=c.variant,
                                              local_files_only=True, low_cpu_mem_usage=False,
                                              torch_dtype=torch.float32).eval().to(self._device)
        return self._model

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device: str | torch.device) -> _DiffusersImageTokenizer:
        self._device = torch.device(device)
        if self._model is not None:
            self._model.to(self._device)
        return self

    def __getstate__(self) -> dict[str, Any]:
        """DataLoader workers get the tokenizer without weights and load their own (no pickled model)."""
        return {**self.__dict__, "_model": None}

    def recorded_model(self) -> dict[str, Any]:
        return {k: self.model_config.get(k) for k in self.shape_keys}

    def save(self, path: str) -> None:
        """Write a pointer file: the config (folder path, ...) and the model's shape settings, no weights."""
        save_tokenizer_file(path, type(self).__name__, self.config, {},
                            meta={"model": self.recorded_model(), "weights": "not stored: read from config.path"})

    @classmethod
    def load(cls, path: str) -> _DiffusersImageTokenizer:
        payload = read_tokenizer_file(path, cls.__name__)
        out = cls(config_from_payload(cls.config_class, payload, path))
        recorded, found = (payload.get("meta") or {}).get("model"), out.recorded_model()
        if recorded != found:
            raise TokenizerFileError(
                f"{str(path)!r} was saved for a {cls.class_name} with {recorded}, but {out.config.path!r} now "
                f"holds one with {found}: point config.path at the model the file was made with")
        return out

    def num_tokens(self, raw: Any = None) -> int:
        return self.tokens_per_image

    @property
    def tokens_per_image(self) -> int:
        p = getattr(self.config, "patch_size", 1)
        return (self.side // p) ** 2

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        """float[B, 3, R, R] in [0, 1] -> the model's input range [-1, 1] on its device."""
        return images.float().to(self._device) * 2 - 1

    @staticmethod
    def _images(x: torch.Tensor) -> torch.Tensor:
        """Model output float[B, 3, R, R] in [-1, 1] -> float[B, 3, R, R] in [0, 1] on the CPU."""
        return ((x.float() + 1) / 2).clamp(0, 1).cpu()


class DiffusersVQTokenizer(_DiffusersImageTokenizer, DiscreteTokenizer):
    """Images <-> ``long[(R/d)^2]`` codes of a local ``diffusers.VQModel`` (row-major latent cells).

    ``d`` = 2^(len(block_out_channels) - 1); a VQGAN with 4 down blocks and 8,192 codes at
    R = 512 gives 1,024 tokens per image from a vocabulary of 8,192 (Chameleon's shape).
    Point ``config.path`` at a folder saved with ``VQModel.save_pretrained`` (add
    ``config.subfolder: vqvae`` / ``movq`` for a whole pipeline folder). Encoding uses the model's own
    quantizer (``model.quantize``), decoding its codebook and decoder, so codes match diffusers exactly.
    """

    class_name = "VQModel"
    config_class = DiffusersVQConfig
    shape_keys = ("num_vq_embeddings", "latent_channels", "vq_embed_dim", "block_out_channels")

    def __init__(self, config: DiffusersVQConfig) -> None:  # typed: jsonargparse builds it from YAML
        super().__init__(config)

    @property
    def vocab_size(self) -> int:
        return int(self.model_config["num_vq_embeddings"])

    @property
    def embed_dim(self) -> int:
        return int(self.model_config.get("vq_embed_dim") or self.model_config["latent_channels"])

    @torch.no_grad()
    def encode_batch(self, images: torch.Tensor) -> torch.Tensor:
        """float[B, 3, R, R] in [0, 1] -> long[B, (R/d)^2] codes in [0, vocab_size)."""
        h = self.model.encode(self._pixels(images)).latents  # (B, E, R/d, R/d), after quant_conv
        _, _, (_, _, ids) = self.model.quantize(h)  # ids (B * side * side,), from the (B, h, w, E) layout
        return ids.view(images.shape[0], -1).cpu()

    @torch.no_grad()
    def decode_batch(self, ids: torch.Tensor) -> torch.Tensor:
        """long[B, (R/d)^2] -> float[B, 3, R, R] in [0, 1]."""
        n = self.tokens_per_image
        if ids.ndim != 2 or ids.shape[1] != n:
            raise ValueError(f"expected ids of shape [B, {n}], got {tuple(ids.shape)}")
        if ids.numel() and not (0 <= int(ids.min()) and int(ids.max()) < self.vocab_size):
            raise ValueError(f"image ids must lie in [0, {self.vocab_size})")
        B, flat = ids.shape[0], ids.reshape(-1).to(self._device)
        shape = (B, self.side, self.side, self.embed_dim)
        if self.model_config.get("lookup_from_codebook"):  # the model looks the codes up itself
            out = self.model.decode(flat, force_not_quantize=True, shape=shape)
        else:
            quant = self.model.quantize.get_codebook_entry(flat, shape)  # (B, E, side, side)
            out = self.model.decode(quant, force_not_quantize=True)
        return self._images(out.sample)


class DiffusersKLTokenizer(_DiffusersImageTokenizer, ContinuousTokenizer):
    """Images <-> ``float[(R/d/p)^2, C * p * p]`` latent patches of a local ``diffusers.AutoencoderKL``.

    encode: image -> posterior mean (no sampling, deterministic) -> ``(mean - shift) * scaling``
    -> patchify (row-major patches, channels-then-pixels inside a patch) -> float[n, C * p * p];
    decode inverts each step. ``scaling_factor`` / ``shift_factor`` default to the model's own
    (SD 1.x/2.x VAE: 0.18215 and none), which bring its latents near unit variance for diffusion.
    An SD-class VAE (d = 8, C = 4) at R = 256 with p = 2 gives 256 patches of width 16. Point
    ``config.path`` at a folder saved with ``AutoencoderKL.save_pretrained`` (or a pipeline folder
    with ``config.subfolder: vae``). Per-channel ``latents_mean`` / ``latents_std`` are not applied.
    """

    class_name = "AutoencoderKL"
    config_class = DiffusersKLConfig
    shape_keys = ("latent_channels", "block_out_channels")

    def __init__(self, config: DiffusersKLConfig) -> None:  # typed: jsonargparse builds it from YAML
        super().__init__(config)
        mc = self.model_config
        self.scaling = float(config.scaling_factor if config.scaling_factor is not None
                             else mc.get("scaling_factor", 1.0))
        shift = config.shift_factor if config.shift_factor is not None else mc.get("shift_factor")
        self.shift = float(shift or 0.0)
        self.latent_channels = int(mc["latent_channels"])

    @property
    def latent_dim(self) -> int:
        return self.latent_channels * self.config.patch_size**2

    @torch.no_grad()
    def encode_batch(self, images: torch.Tensor) -> torch.Tensor:
        """float[B, 3, R, R] in [0, 1] -> float[B, n_patches, latent_dim]."""
        mean = self.model.encode(self._pixels(images)).latent_dist.mean  # (B, C, R/d, R/d)
        return patchify((mean.float() - self.shift) * self.scaling, self.config.patch_size).cpu()

    @torch.no_grad()
    def decode_batch(self, latents: torch.Tensor) -> torch.Tensor:
        """float[B, n_patches, latent_dim] -> float[B, 3, R, R] in [0, 1]."""
        n, d = self.tokens_per_image, self.latent_dim
        if latents.ndim != 3 or latents.shape[1:] != (n, d):
            raise ValueError(f"expected latents of shape [B, {n}, {d}], got {tuple(latents.shape)}")
        z = unpatchify(latents.float().to(self._device), self.config.patch_size, self.latent_channels,
                       self.side, self.side)  # (B, C, side, side)
        return self._images(self.model.decode(z / self.scaling + self.shift).sample)
