"""``MultiModalBatch``: the one batch contract between ``data/`` and the model.

A batch is ``B`` rows of exactly ``T = seq_len`` positions. Each row packs whole
documents back to back, then padding. All fields are ``torch.long`` of shape
``[B, T]``:

- ``tokens``    ids in the *joint* vocabulary (``data/vocab.py``).
- ``modality``  ``Modality`` id of each token (``vocab.modality_of(tokens)``);
                padding and boundary/special tokens are ``Modality.TEXT``.
- ``doc_ids``   index of the document within its row (0, 1, 2, ...); the padding
                at the end of a row gets its *own* id (one more than the last
                document), so a mask ``same_doc & causal`` never lets padding
                and real tokens see each other and no row is fully masked.
- ``positions`` position inside the document, restarting at 0 for every
                document (and for the padding span).
- ``targets``   next-token target: ``tokens[b, t + 1]`` when position ``t + 1``
                belongs to the same document, else ``IGNORE_INDEX`` (-100): the
                last token of every document and all padding.

Continuous images (Transfusion setting) add two fields, both ``None`` otherwise:

- ``latents``   ``float[B, T, D]``: the clean latent patch at every image position
                (tokens there are ``vocab.latent_id``), zero rows elsewhere.
- ``span_ids``  ``long[B, T]``: which image of the row a position belongs to
                (0, 1, ... per row), -1 for every other position; the backbone
                attends bidirectionally inside a span (``model/masks.py``).

Training batches of several sources add one more field (``None`` otherwise):

- ``source_ids`` ``long[B, T]``: the index of the training source (``data.sources`` order) of each
                position's document, -1 for padding; what per-source training losses group by.

Loss masks per modality follow from ``targets`` and the modality of the
*target* position ``t + 1`` (``loss_mask``): the prediction of the first image
code (made at the ``BOI`` token) counts as image loss, the prediction of ``EOI``
(made at the last image code) counts as text loss.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from mot_lightning.modality import Modality

IGNORE_INDEX = -100


@dataclass
class MultiModalBatch:
    tokens: torch.Tensor  # long[B, T]
    modality: torch.Tensor  # long[B, T]
    doc_ids: torch.Tensor  # long[B, T]
    positions: torch.Tensor  # long[B, T]
    targets: torch.Tensor  # long[B, T], IGNORE_INDEX where there is no target
    latents: torch.Tensor | None = None  # float[B, T, D] clean image latents (continuous images only)
    span_ids: torch.Tensor | None = None  # long[B, T] image span per position, -1 outside images
    source_ids: torch.Tensor | None = None  # long[B, T] training source of each position, -1 for padding

    def __post_init__(self) -> None:
        shape = self.tokens.shape
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "latents" or value is None:
                continue
            if value.shape != shape or value.dtype != torch.long:
                raise ValueError(
                    f"MultiModalBatch.{f.name} must be long{list(shape)}, got {value.dtype}{list(value.shape)}"
                )
        if (self.latents is None) != (self.span_ids is None):
            raise ValueError("MultiModalBatch.latents and span_ids come together (continuous images) or not at all")
        if self.latents is not None and (self.latents.shape[:2] != shape or not self.latents.is_floating_point()):
            raise ValueError(f"MultiModalBatch.latents must be float{list(shape)} + [latent_dim], "
                             f"got {self.latents.dtype}{list(self.latents.shape)}")

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def seq_len(self) -> int:
        return self.tokens.shape[1]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MultiModalBatch:
        """Move every field (Lightning calls this through ``move_data_to_device``)."""
        return self._apply(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> MultiModalBatch:
        """Called by ``DataLoader(pin_memory=True)`` in its pinning thread."""
        return self._apply(torch.Tensor.pin_memory)

    def _apply(self, fn) -> MultiModalBatch:
        return replace(self, **{f.name: fn(v) for f in fields(self) if (v := getattr(self, f.name)) is not None})

    @property
    def has_latents(self) -> bool:
        return self.latents is not None

    def latent_mask(self) -> torch.Tensor:
        """``bool[B, T]``: latent-image positions (all False without continuous images)."""
        if self.span_ids is None:
            return torch.zeros_like(self.tokens, dtype=torch.bool)
        return self.span_ids >= 0

    def target_modality(self) -> torch.Tensor:
        """``long[B, T]``: modality of the token each position predicts (position ``t + 1``).

        The last column has no successor in the row; its target is always
        ``IGNORE_INDEX`` (documents never cross rows), so its value is irrelevant.
        """
        return torch.roll(self.modality, shifts=-1, dims=1)

    def loss_mask(self, modality: Modality | None = None) -> torch.Tensor:
        """``bool[B, T]``: positions whose next-token loss counts (for one modality if given)."""
        mask = self.targets != IGNORE_INDEX
        if modality is not None:
            mask = mask & (self.target_modality() == int(modality))
        return mask
