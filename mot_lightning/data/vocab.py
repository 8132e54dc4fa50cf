"""The joint vocabulary: every tokenizer's own ids laid out in one id space.

Layout (contiguous ranges, in this order)::

    [0, text)                      text tokenizer ids (offset 0)
    [text, text + 7)               special tokens: PAD BOS EOS BOI EOI BOS_SPEECH EOS_SPEECH
    [image_offset, +image_size)    image codes  (image tokenizer id + image_offset)
    [speech_offset, +speech_size)  speech codes (speech tokenizer id + speech_offset)

**Special tokens are TEXT-modality tokens** (docs/contracts.md, "Modalities and the joint vocabulary"): document
begin/end, padding and the begin/end markers of image and speech spans are
embedded and predicted by the text tower. Deciding *that* an image starts is
a language decision (it is what a caption-then-image document asks of the
model), and keeping the markers in the text range makes every modality one
contiguous id range, so ``modality_of`` is two comparisons. Consequence for
losses: predicting ``EOI`` (from the last image code) is text loss, predicting
the first image code (from ``BOI``) is image loss.

A modality without a tokenizer has an empty range (size 0).

**Continuous images** (Transfusion setting, ``image_latent=True``): the image
range holds one id, ``latent_id``, a placeholder at every latent-patch
position. It keeps ``modality_of`` working unchanged (those positions route to
the image tower); the model replaces its embedding by the projected noised
latent and never trains it as a next-token target (``data/packing.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mot_lightning.modality import Modality
from mot_lightning.tokenizers.base import ContinuousTokenizer, DiscreteTokenizer, Tokenizer

SPECIAL_TOKENS = ("PAD", "BOS", "EOS", "BOI", "EOI", "BOS_SPEECH", "EOS_SPEECH")


@dataclass(frozen=True)
class JointVocab:
    text_size: int
    image_size: int = 0
    speech_size: int = 0
    image_latent: bool = False  # images are continuous latents: the image range is the one ``latent_id``

    def __post_init__(self) -> None:
        if self.text_size <= 0 or self.image_size < 0 or self.speech_size < 0:
            raise ValueError(f"vocabulary sizes must be text > 0, image/speech >= 0; got {self}")
        if self.image_latent and self.image_size != 1:
            raise ValueError(f"a latent-image vocabulary has image_size 1 (the placeholder id), got {self}")

    @classmethod
    def from_tokenizers(
        cls,
        text: DiscreteTokenizer,
        image: Tokenizer | None = None,
        speech: DiscreteTokenizer | None = None,
    ) -> JointVocab:
        latent = isinstance(image, ContinuousTokenizer)
        return cls(
            text_size=text.vocab_size,
            image_size=1 if latent else (image.vocab_size if image is not None else 0),
            speech_size=speech.vocab_size if speech is not None else 0,
            image_latent=latent,
        )

    # --- special tokens (text modality) -------------------------------------
    def special(self, name: str) -> int:
        return self.text_size + SPECIAL_TOKENS.index(name)

    @property
    def pad_id(self) -> int:
        return self.special("PAD")

    @property
    def bos_id(self) -> int:
        return self.special("BOS")

    @property
    def eos_id(self) -> int:
        return self.special("EOS")

    @property
    def boi_id(self) -> int:
        return self.special("BOI")

    @property
    def eoi_id(self) -> int:
        return self.special("EOI")

    @property
    def bos_speech_id(self) -> int:
        return self.special("BOS_SPEECH")

    @property
    def eos_speech_id(self) -> int:
        return self.special("EOS_SPEECH")

    @property
    def latent_id(self) -> int:
        """The placeholder id at latent-image positions (continuous-image vocabularies only)."""
        if not self.image_latent:
            raise ValueError("this vocabulary has discrete image codes, not latent images")
        return self.image_offset

    # --- ranges ---------------------------------------------------------------
    @property
    def image_offset(self) -> int:
        return self.text_size + len(SPECIAL_TOKENS)

    @property
    def speech_offset(self) -> int:
        return self.image_offset + self.image_size

    @property
    def size(self) -> int:
        """Total number of joint ids (the model's embedding/head size)."""
        return self.speech_offset + self.speech_size

    def offset(self, modality: Modality) -> int:
        return {Modality.TEXT: 0, Modality.IMAGE: self.image_offset, Modality.SPEECH: self.speech_offset}[
            Modality(modality)
        ]

    def range(self, modality: Modality) -> tuple[int, int]:
        """Half-open joint id range ``[lo, hi)`` of one modality (text includes the specials)."""
        lo = self.offset(modality)
        hi = {
            Modality.TEXT: self.image_offset,
            Modality.IMAGE: self.speech_offset,
            Modality.SPEECH: self.size,
        }
        return lo, hi[Modality(modality)]

    def modality_of(self, ids: torch.Tensor) -> torch.Tensor:
        """``long[...]`` Modality id of each joint id (same shape as ``ids``)."""
        return (ids >= self.image_offset).long() + (ids >= self.speech_offset).long()

    def to_joint(self, ids: torch.Tensor, modality: Modality) -> torch.Tensor:
        """Tokenizer-local ids -> joint ids (checks the range, a wrong tokenizer shows up here)."""
        lo = self.offset(modality)
        size = {
            Modality.TEXT: self.text_size,
            Modality.IMAGE: self.image_size,
            Modality.SPEECH: self.speech_size,
        }
        n = size[Modality(modality)]
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n):
            raise ValueError(
                f"{Modality(modality).label} tokenizer produced ids outside [0, {n}); "
                "its vocab_size must cover every id it emits"
            )
        return ids.long() + lo

    def to_local(self, ids: torch.Tensor, modality: Modality) -> torch.Tensor:
        """Joint ids of one modality -> that tokenizer's own ids (for decoding)."""
        return ids.long() - self.offset(modality)
