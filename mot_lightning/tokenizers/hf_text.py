"""The text tokenizer of a Hugging Face model folder (``tokenizer.json``), and the way back for export.

``HFTextTokenizer(path)`` reads ``tokenizer.json`` with HF ``tokenizers`` (no ``transformers``, no hub). Its
ids are the LLM's own: its vocabulary block is ``config.json``'s ``vocab_size`` (the embedding rows, padding
rows included), so every LLM row keeps its id in the joint vocabulary and the image / speech codes and the
app's boundary tokens come after it (``data/vocab.py``). The LLM's special tokens (``<|endoftext|>``,
``<|im_start|>``, ...) are ordinary text-block ids, encoded where they appear in the text.

``hf_tokenizer_json`` is the way back: the app's byte or BPE text tokenizer as a ``tokenizer.json`` giving the
same ids, plus the app's boundary tokens (``<|BOS|>``, ...) as special tokens at their joint-vocabulary ids.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from mot_lightning.modality import Modality
from mot_lightning.tokenizers.base import DiscreteTokenizer, TokenizerFileError
from mot_lightning.tokenizers.files import read_tokenizer_file, save_tokenizer_file

TOKENIZER_JSON = "tokenizer.json"
# config.json key the app's exports add: the blocks their embedding rows hold ({"text": T, "special": 7})
LAYOUT_KEY = "mot_vocab_layout"


def special_name(name: str) -> str:
    """How an app boundary token (``BOS``) is spelled in an exported tokenizer (``<|BOS|>``)."""
    return f"<|{name}|>"


def text_block_size(config: dict) -> int:
    """The LLM's vocabulary block: config.json's ``vocab_size`` (an app export: its text block)."""
    layout = config.get(LAYOUT_KEY)
    return int(layout["text"]) if layout else int(config["vocab_size"])


class HFTextTokenizer(DiscreteTokenizer):
    """``tokenizer.json`` of a HF model folder; ``path``: the folder (or the tokenizer.json file itself)."""

    modality = Modality.TEXT

    def __init__(self, path: str) -> None:
        self.path = str(path)
        self._tok, self._size = None, None

    def _load(self):
        if self._tok is None:
            from tokenizers import Tokenizer as HFTokenizer

            folder = Path(self.path)
            file = folder / TOKENIZER_JSON if folder.is_dir() else folder
            if not file.is_file():
                raise TokenizerFileError(f"no {TOKENIZER_JSON} at {self.path!r}: give the model folder that holds it")
            config = folder / "config.json" if folder.is_dir() else file.with_name("config.json")
            self._set(HFTokenizer.from_file(str(file)),
                      text_block_size(json.loads(config.read_text())) if config.is_file() else None)
        return self._tok

    def _set(self, tok, size: int | None) -> None:
        learned = tok.get_vocab_size(with_added_tokens=False)
        self._tok, self._size = tok, size or learned
        if learned > self._size:
            raise TokenizerFileError(f"{self.path!r}: tokenizer.json has {learned} tokens but config.json's "
                                     f"vocab_size is {self._size}: the folder's files do not belong together")

    @property
    def vocab_size(self) -> int:
        self._load()
        return self._size

    @property
    def special_tokens(self) -> dict[str, int]:
        """The LLM's special (added) tokens inside the text block."""
        tok = self._load()
        return {t.content: i for i, t in tok.get_added_tokens_decoder().items() if t.special and i < self._size}

    def encode(self, raw: str) -> torch.Tensor:
        if not isinstance(raw, str):
            raise TypeError(f"text tokenizers encode str, got {type(raw).__name__}")
        ids = self._load().encode(raw, add_special_tokens=False).ids
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, encoded: torch.Tensor | Sequence[int]) -> str:
        """Ids past the tokenizer's tokens (padding rows, only from sampling) decode to nothing."""
        tok = self._load()
        ids = [i for i in torch.as_tensor(encoded).flatten().tolist() if 0 <= i < self._size]
        return tok.decode(ids, skip_special_tokens=False)

    def num_tokens(self, raw: str) -> int:
        return int(self.encode(raw).numel())

    def save(self, path: str) -> None:
        save_tokenizer_file(path, "HFTextTokenizer", {"path": self.path}, {},
                            {"hf_tokenizer_json": self._load().to_str(), "vocab_size": self._size})

    @classmethod
    def load(cls, path: str) -> HFTextTokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        payload = read_tokenizer_file(path, "HFTextTokenizer")
        out = cls(payload["config"]["path"])
        out._set(HFTokenizer.from_str(payload["meta"]["hf_tokenizer_json"]), int(payload["meta"]["vocab_size"]))
        return out


def _byte_chars() -> list[str]:
    """The printable character byte-level BPE uses for each byte 0..255 (GPT-2's byte-to-unicode table):
    printable Latin-1 bytes stand for themselves, the others take code points from 256 on, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def _byte_tokenizer(specials: Sequence[str]):
    """The app's ``ByteTokenizer`` as HF ``tokenizers``: byte ``b`` is id ``b``, its specials 256, 257, ..."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    vocab = {c: b for b, c in enumerate(_byte_chars())}
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(specials))
    return tok


def hf_tokenizer_json(text_tok: DiscreteTokenizer, specials: dict[str, int]) -> str:
    """``tokenizer.json`` text for the app's text tokenizer (``ByteTokenizer``, ``BPETokenizer`` or
    ``HFTextTokenizer``) plus ``specials`` (``{"<|BOS|>": joint id, ...}``) as special tokens at those ids."""
    from tokenizers import Tokenizer as HFTokenizer

    from mot_lightning.tokenizers.text import BPETokenizer, ByteTokenizer

    if isinstance(text_tok, ByteTokenizer):
        tok = _byte_tokenizer(list(text_tok.special_tokens))
    elif isinstance(text_tok, BPETokenizer):
        tok = text_tok._tok
    elif isinstance(text_tok, HFTextTokenizer):
        tok = text_tok._load()
    else:
        raise TypeError(f"no tokenizer.json for a {type(text_tok).__name__}: export supports the byte, BPE and "
                        "Hugging Face text tokenizers")
    tok = HFTokenizer.from_str(tok.to_str())  # a copy: the app's tokenizer stays as it is
    ordered = sorted(specials.items(), key=lambda kv: kv[1])
    first = ordered[0][1] if ordered else 0
    # added tokens take the next free ids: fill unused BPE ids first so the specials land on their joint ids
    tok.add_special_tokens([f"<|unused_{i}|>" for i in range(tok.get_vocab_size(with_added_tokens=True), first)])
    tok.add_special_tokens([content for content, _ in ordered])
    wrong = {c: (tok.token_to_id(c), i) for c, i in ordered if tok.token_to_id(c) != i}
    if wrong:
        raise ValueError(f"special tokens would not keep their ids (got, wanted): {wrong}")
    return tok.to_str()
