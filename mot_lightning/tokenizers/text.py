"""Text tokenizers: raw UTF-8 bytes (no files, the default) and byte-level BPE trained with HF ``tokenizers``.

Both round-trip any string exactly (``decode(encode(s)) == s``): BPE runs on the byte-level
alphabet with no normaliser, so no character is ever unknown or changed. Special tokens
(e.g. an end-of-document token) are optional; the joint vocabulary's boundary tokens are the
data layer's business.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mot_lightning.modality import Modality
from mot_lightning.tokenizers import fit_inputs
from mot_lightning.tokenizers.base import DiscreteTokenizer, TokenizerFileError
from mot_lightning.tokenizers.files import config_from_payload, read_tokenizer_file, save_tokenizer_file
from mot_lightning.tokenizers.fitting import FitData, FittableTokenizer, TrainConfig
from mot_lightning.tokenizers.media import TEXT_EXTS

log = logging.getLogger("mot_lightning.tokenizers")


def _check_text(raw: Any) -> str:
    if not isinstance(raw, str):
        raise TypeError(f"text tokenizers encode str, got {type(raw).__name__}; decode bytes with .decode('utf-8')")
    return raw


def _check_ids(ids: torch.Tensor | Sequence[int], vocab_size: int) -> list[int]:
    ids = torch.as_tensor(ids).flatten().tolist()
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"ids out of range [0, {vocab_size}): {bad[:5]}; offset joint-vocabulary ids back first")
    return ids


class ByteTokenizer(DiscreteTokenizer):
    """UTF-8 bytes as ids 0..255; optional special tokens get ids 256, 257, ... No file needed."""

    modality = Modality.TEXT

    def __init__(self, special_tokens: Sequence[str] = ()) -> None:
        self._specials = list(special_tokens)

    @property
    def vocab_size(self) -> int:
        return 256 + len(self._specials)

    @property
    def special_tokens(self) -> dict[str, int]:
        return {name: 256 + i for i, name in enumerate(self._specials)}

    def encode(self, raw: str) -> torch.Tensor:
        data = _check_text(raw).encode("utf-8")
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).long() if data else torch.zeros(0, dtype=torch.long)

    def decode(self, encoded: torch.Tensor | Sequence[int]) -> str:
        """Special ids are rendered by name; invalid UTF-8 (from sampling) becomes U+FFFD."""
        out, run = [], bytearray()
        for i in _check_ids(encoded, self.vocab_size):
            if i < 256:
                run.append(i)
                continue
            out.append(run.decode("utf-8", errors="replace"))
            run = bytearray()
            out.append(self._specials[i - 256])
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)

    def num_tokens(self, raw: str) -> int:
        return len(_check_text(raw).encode("utf-8"))

    def save(self, path: str) -> None:
        save_tokenizer_file(path, "ByteTokenizer", {"special_tokens": list(self._specials)}, {})

    @classmethod
    def load(cls, path: str) -> ByteTokenizer:
        payload = read_tokenizer_file(path, "ByteTokenizer")
        return cls(special_tokens=payload["config"].get("special_tokens", []))


@dataclass
class BPEConfig:
    vocab_size: int = 8192  # including the 256 byte symbols and the special tokens
    min_frequency: int = 2  # merges seen fewer times are not learned
    special_tokens: list[str] = field(default_factory=list)  # get ids 0..len-1 (HF convention)

    def __post_init__(self) -> None:
        if self.vocab_size < 256 + len(self.special_tokens):
            raise ValueError(f"BPE vocab_size must be >= 256 + #special tokens, got {self.vocab_size}")


class BPETokenizer(DiscreteTokenizer, FittableTokenizer):
    """Byte-level BPE trained on the user's corpus with HF ``tokenizers`` (GPT-2 style pre-split)."""

    modality = Modality.TEXT

    def __init__(self, config: BPEConfig | None = None) -> None:
        self.config = config or BPEConfig()
        self._tok = None  # tokenizers.Tokenizer, set by fit/load

    # ---------------------------------------------------------------- fitting
    def fit(self, data: FitData | Iterable[str], train: TrainConfig | None = None) -> dict[str, float]:
        """Train on text files (``FitData``) or an iterable of strings; returns held-out stats."""
        if isinstance(data, FitData):
            keyed = list(fit_inputs.iter_items(data.path, TEXT_EXTS, _read_text, data.max_items))
            texts, held = fit_inputs.split(keyed, data.held_out, data.seed)
        else:
            texts, held = [_check_text(t) for t in data], []
        self._tok = _train_bpe(texts, self.config, show_progress=log.isEnabledFor(logging.INFO))
        log.info("BPE: learned %d of %d tokens from %d texts", self._tok.get_vocab_size(), self.vocab_size, len(texts))
        return self._held_out_stats(held)

    def _held_out_stats(self, held: list[str]) -> dict[str, float]:
        if not held:
            return {}
        n_bytes = sum(len(t.encode("utf-8")) for t in held)
        n_tok = sum(self.num_tokens(t) for t in held)
        exact = all(self.decode(self.encode(t)) == t for t in held)
        return {"bytes_per_token": n_bytes / max(n_tok, 1), "roundtrip_exact": float(exact),
                "held_out_texts": float(len(held))}

    @property
    def is_fitted(self) -> bool:
        return self._tok is not None

    # ---------------------------------------------------------------- interface
    @property
    def vocab_size(self) -> int:
        """``config.vocab_size``, known before fitting (so the joint vocabulary can be laid out
        from the config); a small corpus may learn fewer tokens, whose ids are then never produced."""
        return self.config.vocab_size

    @property
    def special_tokens(self) -> dict[str, int]:
        self._require_fitted()
        return {name: self._tok.token_to_id(name) for name in self.config.special_tokens}

    def encode(self, raw: str) -> torch.Tensor:
        self._require_fitted()
        ids = self._tok.encode(_check_text(raw), add_special_tokens=False).ids
        return torch.tensor(ids, dtype=torch.long)

    def encode_batch(self, texts: list[str]) -> list[torch.Tensor]:
        """Parallel (Rust) batch encoding."""
        self._require_fitted()
        encs = self._tok.encode_batch([_check_text(t) for t in texts], add_special_tokens=False)
        return [torch.tensor(e.ids, dtype=torch.long) for e in encs]

    def decode(self, encoded: torch.Tensor | Sequence[int]) -> str:
        """Ids the corpus did not fill (>= learned vocabulary, only from sampling) decode to nothing."""
        self._require_fitted()
        learned = self._tok.get_vocab_size()
        ids = [i for i in _check_ids(encoded, self.vocab_size) if i < learned]
        return self._tok.decode(ids, skip_special_tokens=False)

    def num_tokens(self, raw: str) -> int:
        return int(self.encode(raw).numel())

    def save(self, path: str) -> None:
        self._require_fitted()
        save_tokenizer_file(path, "BPETokenizer", self.config, {}, {"hf_tokenizer_json": self._tok.to_str()})

    @classmethod
    def load(cls, path: str) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        payload = read_tokenizer_file(path, "BPETokenizer")
        out = cls(config_from_payload(BPEConfig, payload, path))
        try:
            out._tok = HFTokenizer.from_str(payload["meta"]["hf_tokenizer_json"])
        except Exception as err:  # KeyError if absent; HF tokenizers raises plain Exception on bad JSON
            raise TokenizerFileError(f"{path!r}: the stored BPE model is unreadable ({err}); refit it") from err
        return out


def _read_text(source: bytes | Path) -> str:
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8 text ({err}); re-encode the file as UTF-8") from err


def _train_bpe(texts: list[str], config: BPEConfig, show_progress: bool):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=list(config.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok
