"""The joint vocabulary's layout as the model records it: which embedding / head rows are which modality's.

``MultiModalLM(vocab_layout=...)`` (linked from the data module's ``JointVocab`` by ``mot fit``) holds the
block sizes in id order::

    {"text": 256, "special": 7, "image": 512, "speech": 256}

(``data/vocab.py``: text ids, the special tokens, image codes, speech codes; the specials are text-modality
tokens). Being a hyperparameter it is written into every checkpoint, so a warm start can map rows block
by block into a larger joint vocabulary, and freezing can mask the rows of one modality.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from mot_lightning.data.vocab import SPECIAL_TOKENS, JointVocab
from mot_lightning.modality import Modality

BLOCKS = ("text", "special", "image", "speech")  # id order of the joint vocabulary
BLOCK_MODALITY = {"text": Modality.TEXT, "special": Modality.TEXT, "image": Modality.IMAGE,
                  "speech": Modality.SPEECH}


def vocab_layout(vocab: JointVocab) -> dict[str, int]:
    """The block sizes of ``vocab`` (what ``mot fit`` links into ``model.vocab_layout``)."""
    return {"text": vocab.text_size, "special": len(SPECIAL_TOKENS), "image": vocab.image_size,
            "speech": vocab.speech_size}


def check_layout(layout: Mapping[str, int] | None, vocab_size: int, where: str = "model.vocab_layout") -> None:
    """Raise naming what is wrong with a layout that does not describe a vocabulary of ``vocab_size``."""
    if layout is None:
        return
    unknown = set(layout) - set(BLOCKS)
    if unknown or any(int(n) < 0 for n in layout.values()):
        raise ValueError(f"{where} must map blocks {BLOCKS} to sizes >= 0, got {dict(layout)}")
    if sum(int(n) for n in layout.values()) != vocab_size:
        raise ValueError(f"{where} {dict(layout)} adds up to {sum(layout.values())} ids, but the vocabulary has "
                         f"{vocab_size}: link it from the data module (`mot fit` does) or leave it unset")


def block_ranges(layout: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    """``{block: (lo, hi)}`` half-open id ranges, in id order."""
    out, lo = {}, 0
    for block in BLOCKS:
        n = int(layout.get(block, 0))
        out[block] = (lo, lo + n)
        lo += n
    return out


def modality_rows(layout: Mapping[str, int], modalities: Iterable[Modality], special: bool = True) -> torch.Tensor:
    """bool[V]: True at the ids of ``modalities`` (text's include the special tokens when ``special``)."""
    keep = set(modalities)
    ranges = block_ranges(layout)
    mask = torch.zeros(max(hi for _, hi in ranges.values()), dtype=torch.bool)
    for block, (lo, hi) in ranges.items():
        if BLOCK_MODALITY[block] in keep and (special or block != "special"):
            mask[lo:hi] = True
    return mask
