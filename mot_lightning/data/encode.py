"""``Document`` -> joint token ids, with the boundary tokens of ``data/vocab.py``.

One document becomes::

    BOS  text...  BOI image-codes EOI  text...  BOS_SPEECH speech-codes EOS_SPEECH  ...  EOS

(segments in document order). With a continuous (latent) image tokenizer the
image codes are ``latent_id`` placeholders and the document is a ``LatentDoc``
carrying the latent patches beside the ids (Transfusion setting).

``drop_text=True`` encodes only the non-text segments of a document (``BOS BOI
image EOI EOS`` for a caption-image pair): classifier-free guidance trains the
unconditional model on exactly the prompt it samples from (``BOS BOI``).

``encode_prompt`` lays out the start of a document for generation the same way:
its segments, then the opening of the segment to generate (``BOS caption BOI``,
``BOS BOI codes EOI``, ``BOS text BOS_SPEECH``, ``BOS BOS_SPEECH units EOS_SPEECH``),
so a prompt is always a prefix of a training document.

Runs inside the DataLoader workers, so this
object and the tokenizers it holds must be picklable.
"""

from __future__ import annotations

import torch

from mot_lightning.data.documents import BadSample, Document, Segment, SourceUnusable
from mot_lightning.data.packing import Doc, LatentDoc
from mot_lightning.data.vocab import JointVocab
from mot_lightning.modality import Modality
from mot_lightning.tokenizers.base import ContinuousTokenizer, DiscreteTokenizer, Tokenizer


class MissingTokenizer(SourceUnusable, ValueError):
    """A segment of a modality without a tokenizer: every such document would fail the same way."""


class DocumentEncoder:
    def __init__(
        self,
        text: DiscreteTokenizer,
        image: Tokenizer | None = None,
        speech: DiscreteTokenizer | None = None,
    ) -> None:
        if speech is not None and not isinstance(speech, DiscreteTokenizer):
            raise TypeError(f"the speech tokenizer must be discrete (units), got {type(speech).__name__}")
        if not isinstance(text, DiscreteTokenizer):
            raise TypeError(f"the text tokenizer must be discrete, got {type(text).__name__}")
        self.tokenizers = {Modality.TEXT: text, Modality.IMAGE: image, Modality.SPEECH: speech}
        self.vocab = JointVocab.from_tokenizers(text, image, speech)
        v = self.vocab
        self._bounds = {
            Modality.TEXT: ([], []),
            Modality.IMAGE: ([v.boi_id], [v.eoi_id]),
            Modality.SPEECH: ([v.bos_speech_id], [v.eos_speech_id]),
        }

    @property
    def modalities(self) -> frozenset[Modality]:
        """Modalities this encoder can tokenize (those with a tokenizer)."""
        return frozenset(m for m, tok in self.tokenizers.items() if tok is not None)

    @property
    def latent_dim(self) -> int:
        """Width of one latent image patch; 0 with a discrete (or no) image tokenizer."""
        image = self.tokenizers[Modality.IMAGE]
        return image.latent_dim if isinstance(image, ContinuousTokenizer) else 0

    def encode(self, doc: Document, drop_text: bool = False) -> Doc:
        """Joint ids of the whole document, ``BOS ... EOS``: ``long[n]``, or a ``LatentDoc`` with latent images."""
        segments = [s for s in doc.segments if not (drop_text and s.modality == Modality.TEXT)]
        pieces = self._pieces(segments)
        if not pieces:
            raise BadSample(
                "empty_doc", f"{doc.key}: no tokens after filtering ({doc.dropped} segments dropped)"
            )
        return self._join([self._marker(self.vocab.bos_id), *pieces, self._marker(self.vocab.eos_id)])

    def encode_prompt(self, doc: Document, then: Modality = Modality.TEXT) -> Doc:
        """The start of a document for the model to continue: ``BOS``, every segment of ``doc`` laid out as
        ``encode`` does, then the opening of a ``then`` segment; no ``EOS``. ``long[n]``, or a ``LatentDoc``.

        ``then``: ``TEXT`` adds nothing (text needs no opening token: ``BOS BOI codes EOI`` -> a caption);
        ``SPEECH`` adds ``BOS_SPEECH``; ``IMAGE`` adds ``BOI``, and with latent images also the image's
        ``num_tokens`` latent placeholders (zero latents): the span a diffusion sampler fills as a whole.
        ``doc`` may hold no segment: ``BOS BOI`` is the unconditional prompt of classifier-free guidance.
        """
        pieces = [self._marker(self.vocab.bos_id), *self._pieces(doc.segments)]
        then = Modality(then)
        if then != Modality.TEXT:
            tokenizer = self._tokenizer(then)
            opening = self._bounds[then][0]
            if isinstance(tokenizer, ContinuousTokenizer):  # the whole span: BOI + placeholders
                n = tokenizer.num_tokens(None)
                ids = torch.tensor([*opening, *[self.vocab.latent_id] * n], dtype=torch.long)
                pieces.append((ids, torch.zeros(len(ids), tokenizer.latent_dim)))
            else:
                pieces.append((torch.tensor(opening, dtype=torch.long), None))
        return self._join(pieces)

    def _pieces(self, segments: list[Segment]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Each segment's ids (with boundary tokens) and latents; segments without tokens left out."""
        return [p for p in (self._segment(seg) for seg in segments) if len(p[0])]

    @staticmethod
    def _marker(token: int) -> tuple[torch.Tensor, None]:
        return torch.tensor([token]), None

    def _join(self, pieces: list[tuple[torch.Tensor, torch.Tensor | None]]) -> Doc:
        """Concatenated pieces: ``long[n]`` ids, or a ``LatentDoc`` (zero latents outside latent images)."""
        ids = torch.cat([p[0] for p in pieces])
        if not self.vocab.image_latent:
            return ids
        width = self.latent_dim
        latents = [lat if lat is not None else torch.zeros(len(i), width) for i, lat in pieces]
        return LatentDoc(ids, torch.cat(latents))

    def _tokenizer(self, modality: Modality) -> Tokenizer:
        tokenizer = self.tokenizers[modality]
        if tokenizer is None:
            raise MissingTokenizer(f"no {modality.label} tokenizer configured; drop the modality or add one")
        return tokenizer

    def _segment(self, seg: Segment) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(joint ids long[n] with boundary tokens, latents float[n, D] for a latent image else None)."""
        tokenizer = self._tokenizer(seg.modality)
        before, after = self._bounds[seg.modality]
        if isinstance(tokenizer, ContinuousTokenizer):
            patches = tokenizer.encode(seg.value).float()  # (n, D)
            if patches.dim() != 2 or patches.shape[1] != tokenizer.latent_dim:
                raise ValueError(f"{type(tokenizer).__name__}.encode must give float[n, {tokenizer.latent_dim}], "
                                 f"got {tuple(patches.shape)}")
            ids = torch.full((len(patches),), self.vocab.latent_id, dtype=torch.long)
            zero = torch.zeros(1, patches.shape[1])
            latents = torch.cat([zero, patches, zero])
        else:
            ids = self.vocab.to_joint(tokenizer.encode(seg.value).reshape(-1), seg.modality)
            latents = None
            if ids.numel() == 0:
                return ids, None
        ids = torch.cat([torch.tensor(before, dtype=torch.long), ids, torch.tensor(after, dtype=torch.long)])
        return ids, latents
