"""Raw validation media with their text, for the generation tools: images or speech clips and the text of
the documents they come from, read from a validation set's shards (no tokenizer involved).

The image->caption prompts, the tokenizer reconstructions of ``SampleLogger``, the speech->text prompts and
the FID reference images all come from here (through the data module's ``image_text_pairs`` /
``speech_text_pairs``). Damaged shards and documents are passed over: the validation stream itself counts
them.
"""
from __future__ import annotations

import torch

from mot_lightning.data.counters import NullCounters
from mot_lightning.data.documents import BadSample, DecodeLimits, parse_sample
from mot_lightning.data.sources import SourceConfig, resolve
from mot_lightning.modality import Modality
from mot_lightning.shards.reader import shard_samples


def media_text_pairs(sets: list[SourceConfig], modality: Modality, n: int, image_size: int,
                     limits: DecodeLimits) -> tuple[list[torch.Tensor], list[str]]:
    """Up to ``n`` pairs from ``sets`` in order (each in shard order): each document's last ``modality``
    segment (a two-scene story holds two images) and its text segments joined by spaces (the transcript of
    a speech-transcript pair). No pairs without a set; sets without ``modality`` give none."""
    media: list[torch.Tensor] = []
    texts: list[str] = []
    for config in sets:
        if len(media) >= n or modality.label not in config.modalities:
            continue
        source = resolve(config, frozenset({Modality.TEXT, modality}))
        for sample in shard_samples(source.urls, NullCounters()):
            try:
                doc = parse_sample(sample, source.keep, image_size, limits)
            except BadSample:
                continue
            value = next((s.value for s in reversed(doc.segments) if s.modality == modality), None)
            if value is not None:
                media.append(value)
                texts.append(" ".join(s.value for s in doc.segments if s.modality == Modality.TEXT))
            if len(media) >= n:
                break
    return media, texts


def stack_images(images: list[torch.Tensor], side: int) -> torch.Tensor:
    """float[N, 3, side, side] (float[0, 3, side, side] for no image)."""
    return torch.stack(images) if images else torch.zeros(0, 3, side, side)


class MediaPairs:
    """The data module's raw media with their text (a mixin of ``MultiModalDataModule``: it reads ``plan``,
    ``image_size`` and ``decode_limits()`` of the module)."""

    def image_text_pairs(self, n: int) -> tuple[torch.Tensor, list[str]]:
        """Up to ``n`` images float[N, 3, R, R] in [0, 1] (R = ``image_size``) and the text of their documents,
        from the first validation set (float[0, 3, R, R] and [] without one)."""
        images, texts = self._media_text_pairs(n, Modality.IMAGE)
        return stack_images(images, self.image_size), texts

    def speech_text_pairs(self, n: int) -> tuple[list[torch.Tensor], list[str]]:
        """Up to ``n`` speech clips (float[samples] mono at 16 kHz) and their documents' text (the transcript),
        from the first validation set (``[], []`` without one)."""
        return self._media_text_pairs(n, Modality.SPEECH)

    def train_image_text_pairs(self, n: int) -> tuple[torch.Tensor, list[str]]:
        """Up to ``n`` images and their documents' text from the training sources that hold images, in order
        (what a fitted label classifier learns from); float[0, 3, R, R] and [] without any."""
        images, texts = media_text_pairs(self.plan.train_configs(), Modality.IMAGE, n, self.image_size,
                                         self.decode_limits())
        return stack_images(images, self.image_size), texts

    def _media_text_pairs(self, n: int, modality: Modality) -> tuple[list[torch.Tensor], list[str]]:
        return media_text_pairs(self.plan.val_configs()[:1], modality, n, self.image_size, self.decode_limits())
