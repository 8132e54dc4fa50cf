"""``Document`` -> joint token ids, with the boundary tokens of ``data/vocab.py``.

One document becomes::

    BOS  text...  BOI image-codes EOI  text...  BOS_SPEECH speech-codes EOS_SPEECH  ...  EOS

(segments in document order). Runs inside the DataLoader workers, so this
object and the tokenizers it holds must be picklable.
"""

from __future__ import annotations

import torch

from mot_lightning.data.documents import BadSample, Document, Segment
from mot_lightning.data.vocab import JointVocab
from mot_lightning.modality import Modality
from mot_lightning.tokenizers.base import DiscreteTokenizer


class DocumentEncoder:
    def __init__(
        self,
        text: DiscreteTokenizer,
        image: DiscreteTokenizer | None = None,
        speech: DiscreteTokenizer | None = None,
    ) -> None:
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

    def encode(self, doc: Document) -> torch.Tensor:
        """``long[n]`` joint ids of the whole document, ``BOS ... EOS``."""
        pieces = [self._segment(seg) for seg in doc.segments]
        pieces = [p for p in pieces if p.numel()]
        if not pieces:
            raise BadSample(
                "empty_doc", f"{doc.key}: no tokens after filtering ({doc.dropped} segments dropped)"
            )
        v = self.vocab
        return torch.cat([torch.tensor([v.bos_id]), *pieces, torch.tensor([v.eos_id])])

    def _segment(self, seg: Segment) -> torch.Tensor:
        tokenizer = self.tokenizers[seg.modality]
        if tokenizer is None:
            raise ValueError(f"no {seg.modality.label} tokenizer configured; drop the modality or add one")
        ids = self.vocab.to_joint(tokenizer.encode(seg.value).reshape(-1), seg.modality)
        if ids.numel() == 0:
            return ids
        before, after = self._bounds[seg.modality]
        return torch.cat([torch.tensor(before, dtype=torch.long), ids, torch.tensor(after, dtype=torch.long)])
