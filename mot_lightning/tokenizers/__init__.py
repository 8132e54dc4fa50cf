"""Tokenizers: raw text / images / speech <-> what the backbone consumes (see base.py).

Files: base (interface) · files (weights-only file format) · media (image/audio conversion)
· fit_inputs (folders, globs and tar shards to fit on) · fitting (FitData, TrainConfig)
· text (bytes, BPE) · hf_text (a HF folder's tokenizer.json) · image_kmeans · vqvae (+ nets, autoencoder)
· speech · latent (KL-VAE)
· pretrained (diffusers VQ / KL autoencoders from a local folder)
· registry (load_tokenizer) · cli (`mot tokenizer`). Demo data to fit on comes from
``mot_lightning/world`` (``mot tokenizer demo-data``).

Names are imported lazily (PEP 562) so that ``import mot_lightning.tokenizers`` and the text
tokenizers stay cheap in dataloader workers; Lightning loads only with the VQ-VAE / KL-VAE, diffusers
only when a pretrained adapter first loads its weights.
"""
from __future__ import annotations

import importlib
from typing import Any

from mot_lightning.tokenizers.base import (
    ContinuousTokenizer,
    DiscreteTokenizer,
    Tokenizer,
    TokenizerFileError,
)

_LAZY = {
    "FitData": "fitting", "TrainConfig": "fitting", "FittableTokenizer": "fitting",
    "load_tokenizer": "registry",
    "ByteTokenizer": "text", "BPETokenizer": "text", "BPEConfig": "text", "HFTextTokenizer": "hf_text",
    "KMeansImageTokenizer": "image_kmeans", "KMeansImageConfig": "image_kmeans",
    "VQImageTokenizer": "vqvae", "VQVAEConfig": "vqvae", "VQVAE": "vqvae", "VectorQuantizerEMA": "vqvae",
    "SpeechUnitTokenizer": "speech", "SpeechUnitConfig": "speech",
    "LatentImageTokenizer": "latent", "KLVAEConfig": "latent", "KLVAE": "latent",
    "DiffusersVQTokenizer": "pretrained", "DiffusersVQConfig": "pretrained",
    "DiffusersKLTokenizer": "pretrained", "DiffusersKLConfig": "pretrained",
}

__all__ = [
    "KLVAE",
    "VQVAE",
    "BPEConfig",
    "BPETokenizer",
    "ByteTokenizer",
    "ContinuousTokenizer",
    "DiffusersKLConfig",
    "DiffusersKLTokenizer",
    "DiffusersVQConfig",
    "DiffusersVQTokenizer",
    "DiscreteTokenizer",
    "FitData",
    "FittableTokenizer",
    "HFTextTokenizer",
    "KLVAEConfig",
    "KMeansImageConfig",
    "KMeansImageTokenizer",
    "LatentImageTokenizer",
    "SpeechUnitConfig",
    "SpeechUnitTokenizer",
    "Tokenizer",
    "TokenizerFileError",
    "TrainConfig",
    "VQImageTokenizer",
    "VQVAEConfig",
    "VectorQuantizerEMA",
    "load_tokenizer",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"mot_lightning.tokenizers.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'mot_lightning.tokenizers' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
