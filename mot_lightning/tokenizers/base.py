"""The interface every tokenizer implements (text, VQ image, speech units, continuous latents).

A tokenizer turns one raw item of its modality into what the backbone consumes
and back:

- ``DiscreteTokenizer``: ``encode(raw) -> long[n]`` ids in ``[0, vocab_size)``
  (its *own* id space; the data layer offsets ids into the joint vocabulary),
  ``decode(ids) -> raw``.
- ``ContinuousTokenizer``: ``encode(raw) -> float[n, latent_dim]`` patch
  latents, ``decode(latents) -> raw``.

Raw types per modality: text ``str``; image ``float[3, H, W]`` in ``[0, 1]``;
speech ``float[samples]`` mono at ``sample_rate`` Hz in ``[-1, 1]``.

Every tokenizer saves to one file and loads from it with weights-only
loading (``torch.load(..., weights_only=True)``); fitting (for learned ones)
happens in ``fit``/its own LightningModule, never in ``__init__``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from mot_lightning.modality import Modality


class TokenizerFileError(ValueError):
    """A tokenizer file is missing, corrupt or of the wrong kind; the message says what to do."""


class Tokenizer(ABC):
    modality: Modality

    @abstractmethod
    def encode(self, raw: Any) -> torch.Tensor: ...

    @abstractmethod
    def decode(self, encoded: torch.Tensor) -> Any: ...

    @abstractmethod
    def num_tokens(self, raw: Any) -> int:
        """How many positions ``raw`` occupies in the sequence (without boundary tokens)."""

    @abstractmethod
    def save(self, path: str) -> None: ...

    @classmethod
    @abstractmethod
    def load(cls, path: str) -> "Tokenizer": ...


class DiscreteTokenizer(Tokenizer):
    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Size of this tokenizer's own id space (ids are ``0..vocab_size-1``)."""

    @property
    def special_tokens(self) -> dict[str, int]:
        """Named special ids inside this tokenizer's own space (empty for most)."""
        return {}


class ContinuousTokenizer(Tokenizer):
    @property
    @abstractmethod
    def latent_dim(self) -> int:
        """Channels of one latent patch (the width of ``encode``'s output)."""
