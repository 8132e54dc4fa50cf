"""Small stand-in tokenizers and shard builders shared by the data tests.

Text uses the real ``ByteTokenizer``. Image and speech use stand-ins that
implement ``DiscreteTokenizer`` like the real k-means ones but need no fitting:
a fixed seeded patch-colour codebook for images, a framewise energy quantizer
for speech (the benchmark uses the real fitted ones).
"""

from __future__ import annotations

import io
import itertools
import json
import os

import numpy as np
import soundfile
import torch
import webdataset as wds
from PIL import Image

from mot_lightning.modality import Modality
from mot_lightning.tokenizers.base import DiscreteTokenizer
from mot_lightning.tokenizers.text import ByteTokenizer  # the real text tokenizer


class _Saveable:
    def save(self, path: str) -> None:
        torch.save({"kind": type(self).__name__, **self._state()}, path)

    @classmethod
    def load(cls, path: str):
        return cls(**{k: v for k, v in torch.load(path, weights_only=True).items() if k != "kind"})

    def _state(self) -> dict:
        return {}


class PatchCodebookTokenizer(_Saveable, DiscreteTokenizer):
    """Nearest of ``codes`` fixed random colours for each ``patch x patch`` mean colour."""

    modality = Modality.IMAGE

    def __init__(self, codes: int = 16, patch: int = 8, seed: int = 0) -> None:
        self.codes, self.patch, self.seed = codes, patch, seed
        self.codebook = torch.rand(codes, 3, generator=torch.Generator().manual_seed(seed))  # (K, 3)

    def _state(self) -> dict:
        return {"codes": self.codes, "patch": self.patch, "seed": self.seed}

    @property
    def vocab_size(self) -> int:
        return self.codes

    def encode(self, raw: torch.Tensor) -> torch.Tensor:
        means = torch.nn.functional.avg_pool2d(raw[None], self.patch)[0]  # (3, h, w)
        flat = means.flatten(1).T  # (h*w, 3)
        return torch.cdist(flat, self.codebook).argmin(dim=1)  # (h*w,)

    def decode(self, encoded: torch.Tensor) -> torch.Tensor:
        side = int(len(encoded) ** 0.5)
        img = self.codebook[encoded].T.reshape(3, side, side)
        return img.repeat_interleave(self.patch, 1).repeat_interleave(self.patch, 2)

    def num_tokens(self, raw: torch.Tensor) -> int:
        return (raw.shape[1] // self.patch) * (raw.shape[2] // self.patch)


class EnergyTokenizer(_Saveable, DiscreteTokenizer):
    """One unit per 40 ms frame (25 Hz): the frame's RMS energy quantized into ``levels`` bins."""

    modality = Modality.SPEECH

    def __init__(self, levels: int = 8, frame: int = 640) -> None:
        self.levels, self.frame = levels, frame

    def _state(self) -> dict:
        return {"levels": self.levels, "frame": self.frame}

    @property
    def vocab_size(self) -> int:
        return self.levels

    def encode(self, raw: torch.Tensor) -> torch.Tensor:
        n = len(raw) // self.frame
        frames = raw[: n * self.frame].reshape(n, self.frame)  # (n, frame)
        rms = frames.pow(2).mean(dim=1).sqrt()
        return (rms * 2 * self.levels).long().clamp(0, self.levels - 1)

    def decode(self, encoded: torch.Tensor) -> torch.Tensor:
        amp = (encoded.float() + 0.5) / (2 * self.levels)
        t = torch.arange(self.frame) / 16000.0
        return torch.cat([a * 1.4 * torch.sin(2 * torch.pi * 220 * t) for a in amp])

    def num_tokens(self, raw: torch.Tensor) -> int:
        return len(raw) // self.frame


def tiny_tokenizers() -> dict:
    return {
        "text_tokenizer": ByteTokenizer(),
        "image_tokenizer": PatchCodebookTokenizer(),
        "speech_tokenizer": EnergyTokenizer(),
    }


# --- real media bytes --------------------------------------------------------
def png_bytes(seed: int, size: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def wav_bytes(seed: int, seconds: float = 0.4, rate: int = 16000) -> bytes:
    rng = np.random.default_rng(seed)
    wave = (rng.standard_normal(int(seconds * rate)) * 0.2).astype(np.float32)
    buf = io.BytesIO()
    soundfile.write(buf, wave, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def interleaved(key: str, segments: list[tuple[str, object]]) -> dict:
    """A sample in the interleaved layout from ``[("text", "..."), ("image", png), ("speech", wav)]``."""
    sample, meta = {"__key__": key}, []
    for i, (modality, value) in enumerate(segments):
        if modality == "text":
            meta.append({"modality": "text", "text": value})
        else:
            name = f"{'img' if modality == 'image' else 'aud'}{i}.{'png' if modality == 'image' else 'wav'}"
            meta.append({"modality": modality, "file": name})
            sample[name] = value
    sample["json"] = json.dumps({"segments": meta}).encode()
    return sample


def write_tar(path: str, samples: list[dict]) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with wds.TarWriter(path) as sink:
        for sample in samples:
            sink.write(sample)
    return path


# --- packing invariants ------------------------------------------------------
def unpack_checked(batches, vocab) -> list[torch.Tensor]:
    """Documents (``long[n]``) recovered from packed batches, asserting every packing invariant.

    Per row: each ``doc_ids`` value covers one contiguous span (so a same-doc
    causal mask never crosses documents), ids count up from 0, positions restart
    at 0 per span, targets are the next token inside the span and -100 at its
    end, modality ids equal ``vocab.modality_of(tokens)``, and the trailing
    padding span (all PAD) has its own doc id.
    """
    from mot_lightning.data.batch import IGNORE_INDEX

    docs = []
    for batch in batches:
        assert torch.equal(batch.modality, vocab.modality_of(batch.tokens))
        for b in range(batch.batch_size):
            row = {name: getattr(batch, name)[b] for name in ("tokens", "doc_ids", "positions", "targets")}
            change = torch.nonzero(row["doc_ids"][1:] != row["doc_ids"][:-1]).flatten() + 1
            bounds = [0, *change.tolist(), batch.seq_len]
            for i, (lo, hi) in enumerate(itertools.pairwise(bounds)):
                assert int(row["doc_ids"][lo]) == i, "doc ids must count up by span (no id reused)"
                assert torch.equal(row["positions"][lo:hi], torch.arange(hi - lo))
                span = row["tokens"][lo:hi]
                expected = torch.cat([span[1:], torch.tensor([IGNORE_INDEX])])
                is_pad = bool((span == vocab.pad_id).all())
                if is_pad:
                    assert hi == batch.seq_len, "padding only at the end of a row"
                    assert (row["targets"][lo:hi] == IGNORE_INDEX).all()
                    continue
                assert not (span == vocab.pad_id).any(), "PAD inside a document"
                assert torch.equal(row["targets"][lo:hi], expected)
                docs.append(span.clone())
    return docs


def doc_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """``bool[T, T]``: causal & same document (True = may attend), the twin of the model's mask."""
    t = len(doc_ids)
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    return causal & (doc_ids[:, None] == doc_ids[None, :])


def text_of(doc: torch.Tensor, vocab) -> str:
    """The text bytes of a joint-id document (ByteTokenizer ids are bytes)."""
    return bytes(t for t in doc.tolist() if t < vocab.text_size).decode("utf-8", errors="replace")


def make_datamodule(tmp_path, sources, val_sets=None, **kw):
    """The data module with tiny tokenizers; ``kw`` are its top-level arguments, tokenizers, or
    ``LoaderConfig`` fields (sorted into ``loader=`` here so each test names only what it varies)."""
    from mot_lightning.data.datamodule import MultiModalDataModule
    from mot_lightning.data.options import DemoCorpus, LoaderConfig

    loader = {"num_workers": 2, "shuffle_buffer": 0, "train_batches_per_epoch": 5}
    loader.update({k: kw.pop(k) for k in [*kw] if k in LoaderConfig.__dataclass_fields__})
    args = {"seq_len": 128, "batch_size": 4, "demo": DemoCorpus(str(tmp_path / "demo")), **tiny_tokenizers()}
    args.update(kw)
    return MultiModalDataModule(sources=sources, val_sets=val_sets, loader=LoaderConfig(**loader), **args)


def mixed_corpus(root, n: int = 24, shards: int = 4) -> list[dict]:
    """``n`` good documents of every layout over ``shards`` tar files; returns the samples written."""
    samples = []
    for i in range(n):
        key, tag = f"doc{i:04d}", f"good-{i:03d}"
        kind = i % 4
        if kind == 0:
            samples.append({"__key__": key, "txt": f"{tag} plain text".encode()})
        elif kind == 1:
            samples.append({"__key__": key, "png": png_bytes(i), "txt": f"{tag} caption".encode()})
        elif kind == 2:
            samples.append({"__key__": key, "wav": wav_bytes(i), "txt": f"{tag} transcript".encode()})
        else:
            samples.append(
                interleaved(
                    key, [("text", tag), ("image", png_bytes(i)), ("text", "and"), ("speech", wav_bytes(i))]
                )
            )
    for s in range(shards):
        write_tar(str(root / f"mixed-{s:06d}.tar"), samples[s::shards])
    return samples
