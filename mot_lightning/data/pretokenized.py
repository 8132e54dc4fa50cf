"""Pre-tokenized documents: joint ids (and image latents) stored as plain arrays, stamped with the
fingerprints of the tokenizers that made them.

``mot data tokenize`` (``tokenize_shards.py``) writes one member per document,
``<key>.tok.npz``: an uncompressed ``numpy.savez`` archive, read back with
``numpy.load(allow_pickle=False)`` (nothing is ever unpickled) holding

- ``ids``: ``int32[n]`` the document's joint ids, ``BOS ... EOS``, as ``DocumentEncoder.encode`` lays
  them out;
- ``pieces``: ``int32[S, 2]`` (modality id, length) of each segment's ids (with its boundary tokens),
  in order; ``BOS``/``EOS`` are outside them. They let the stream apply a source's modality filter and
  caption dropout as it does to raw documents;
- ``latents``: ``float32[L, D]`` the latent patch of each ``latent_id`` position, in order (continuous
  images only);
- ``fingerprint``: a JSON string ``{"layout": ..., "text": ..., "image": ..., "speech": ...}``.

Fingerprints: ``layout`` hashes the joint vocabulary (sizes, special ids, latent or discrete images),
the image side and the audio sample rate; each modality's entry is ``<Class>:<hash>`` of the tokenizer's
saved file content (kind, config and weights; fit metrics left out). A document is refused, with a
message naming the tokenizer that differs, unless the layout and the tokenizer of every modality it
holds match the configured ones: ids from another tokenizer would train silently on the wrong codes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Sequence

import numpy as np
import torch

from mot_lightning.data.documents import SAMPLE_RATE, BadSample
from mot_lightning.data.encode import DocumentEncoder
from mot_lightning.data.packing import Doc, LatentDoc
from mot_lightning.data.vocab import JointVocab
from mot_lightning.modality import Modality
from mot_lightning.tokenizers.base import Tokenizer

MEMBER = "tok.npz"  # the sample field of a pre-tokenized document (``<key>.tok.npz`` in the tar)
NPZ_ERRORS = (zipfile.BadZipFile, ValueError, KeyError, OSError, EOFError, TypeError)


class FingerprintMismatch(ValueError):
    """A pre-tokenized document made with other tokenizers than the configured ones."""


# --- fingerprints -------------------------------------------------------------------
def tokenizer_fingerprint(tok: Tokenizer) -> str:
    """``<Class>:<16 hex>`` hashing what ``tok.save`` writes (without its ``meta``: fit metrics)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "tokenizer.pt")
        tok.save(path)
        payload = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(payload, dict):
        payload = {k: v for k, v in payload.items() if k != "meta"}
    digest = hashlib.sha256(type(tok).__name__.encode())
    _feed(digest, payload)
    return f"{type(tok).__name__}:{digest.hexdigest()[:16]}"


def _feed(digest, obj) -> None:
    if isinstance(obj, dict):
        for key in sorted(obj, key=str):
            digest.update(f"<{key}>".encode())
            _feed(digest, obj[key])
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _feed(digest, item)
    elif isinstance(obj, torch.Tensor):
        flat = obj.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{flat.dtype}{tuple(obj.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    else:
        digest.update(repr(obj).encode())


def layout_fingerprint(vocab: JointVocab, image_size: int) -> str:
    text = f"{vocab!r}|specials={[vocab.special(n) for n in _SPECIALS]}|image={image_size}|rate={SAMPLE_RATE}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_SPECIALS = ("pad", "bos", "eos", "boi", "eoi", "bos_speech", "eos_speech")


def fingerprints(encoder: DocumentEncoder, image_size: int) -> dict[str, str]:
    """The layout's and every configured tokenizer's fingerprint (modality labels as keys)."""
    out = {"layout": layout_fingerprint(encoder.vocab, image_size)}
    out.update({m.label: tokenizer_fingerprint(t) for m, t in encoder.tokenizers.items() if t is not None})
    return out


# --- writing ------------------------------------------------------------------------
def pack_document(doc: Doc, pieces: Sequence[tuple[Modality, int]], fingerprint: dict[str, str],
                  vocab: JointVocab) -> bytes:
    """One ``<key>.tok.npz`` member from an encoded document (``long[n]`` BOS ... EOS, or a ``LatentDoc``)
    and the (modality, length) of its segments' pieces in order."""
    ids = doc.ids if isinstance(doc, LatentDoc) else doc
    if sum(n for _, n in pieces) + 2 != len(ids):
        raise ValueError(f"pieces cover {sum(n for _, n in pieces)} ids, the document has {len(ids) - 2} "
                         "between BOS and EOS")
    arrays = {
        "ids": ids.numpy().astype(np.int32),
        "pieces": np.array([[int(m), n] for m, n in pieces], dtype=np.int32).reshape(-1, 2),
        "fingerprint": np.array(json.dumps(fingerprint, sort_keys=True)),
    }
    if isinstance(doc, LatentDoc):
        arrays["latents"] = doc.latents[ids == vocab.latent_id].float().numpy()  # (L, D)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


# --- reading ------------------------------------------------------------------------
class PretokenizedReader:
    """Turns ``<key>.tok.npz`` samples back into documents, checking their fingerprints."""

    def __init__(self, vocab: JointVocab, expected: Callable[[], dict[str, str]]) -> None:
        self.vocab = vocab
        self._expected_fn: Callable[[], dict[str, str]] | None = expected
        self._expected: dict[str, str] | None = None
        self._accepted: set[str] = set()  # fingerprint strings already checked

    @classmethod
    def for_encoder(cls, encoder: DocumentEncoder, image_size: int) -> PretokenizedReader:
        """Expected fingerprints are computed when first needed (raw-only streams never pay for them)."""
        return cls(encoder.vocab, _Fingerprints(encoder, image_size))

    @property
    def expected(self) -> dict[str, str]:
        if self._expected is None:
            self._expected = self._expected_fn()
        return self._expected

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_accepted"] = set()
        return state

    @staticmethod
    def holds(sample: dict) -> bool:
        return MEMBER in sample

    def decode(self, sample: dict, keep: frozenset[Modality],
               drop_text: Callable[[list[Modality]], bool]) -> tuple[Doc | None, int]:
        """(document or None when the filter left nothing, number of segments the filter dropped)."""
        key, url = sample.get("__key__", "?"), sample.get("__url__", "?")
        try:
            with np.load(io.BytesIO(sample[MEMBER]), allow_pickle=False) as npz:
                ids = npz["ids"].astype(np.int64)
                pieces = npz["pieces"].reshape(-1, 2).tolist()
                stamp = str(npz["fingerprint"])
                latents = npz["latents"].astype(np.float32) if "latents" in npz.files else None
        except NPZ_ERRORS as err:
            raise BadSample("bad_pretokenized", f"{url} {key}: {type(err).__name__}: {err}") from None
        modalities = self._check(stamp, pieces, url, key)
        ids_t = torch.from_numpy(ids)
        if sum(n for _, n in pieces) + 2 != len(ids) or ids.min(initial=0) < 0 or ids.max(initial=0) >= self.vocab.size:
            raise BadSample("bad_pretokenized", f"{url} {key}: ids do not match their pieces or the vocabulary")
        full = self._latents(ids_t, latents, url, key)
        kept = [i for i, m in enumerate(modalities) if m in keep]
        dropped = len(pieces) - len(kept)
        if not kept:
            if dropped:
                return None, dropped
            raise BadSample("empty_doc", f"{key}: no segment")
        if drop_text([modalities[i] for i in kept]):
            kept = [i for i in kept if modalities[i] != Modality.TEXT]
        starts = np.cumsum([1] + [n for _, n in pieces])  # piece i spans starts[i] .. starts[i+1]
        spans = [(0, 1), *((int(starts[i]), int(starts[i + 1])) for i in kept), (len(ids) - 1, len(ids))]
        out = torch.cat([ids_t[a:b] for a, b in spans])
        if full is None:
            return out, dropped
        return LatentDoc(out, torch.cat([full[a:b] for a, b in spans])), dropped

    def _check(self, stamp: str, pieces: list, url: str, key: str) -> list[Modality]:
        try:
            modalities = [Modality(m) for m, _ in pieces]
        except ValueError:
            raise BadSample("bad_pretokenized", f"{url} {key}: unknown modality id in pieces") from None
        if stamp in self._accepted:
            return modalities
        try:
            made_with = json.loads(stamp)
        except json.JSONDecodeError:
            raise BadSample("bad_pretokenized", f"{url} {key}: fingerprint is not JSON") from None
        names = ["layout", *sorted({m.label for m in modalities})]
        differ = [n for n in names if made_with.get(n) != self.expected.get(n)]
        if differ:
            detail = "; ".join(f"{n}: shard {made_with.get(n)!r}, configured {self.expected.get(n)!r}" for n in differ)
            what = " and ".join("the joint vocabulary layout" if n == "layout" else f"the {n} tokenizer" for n in differ)
            raise FingerprintMismatch(
                f"pre-tokenized shard {url} (document {key}) was made with other tokenizers: {what} differ "
                f"({detail}). Re-run `mot data tokenize --config <this config>` or configure the tokenizers "
                "that made these shards")
        self._accepted.add(stamp)
        return modalities

    def _latents(self, ids: torch.Tensor, latents: np.ndarray | None, url: str, key: str) -> torch.Tensor | None:
        """float[n, D] with the stored patches at latent positions (None without latent images)."""
        if not self.vocab.image_latent:
            return None
        at = ids == self.vocab.latent_id
        if latents is None or latents.ndim != 2 or len(latents) != int(at.sum()):
            raise BadSample("bad_pretokenized", f"{url} {key}: latents do not match the latent positions")
        full = torch.zeros(len(ids), latents.shape[1])
        full[at] = torch.from_numpy(latents)
        return full


class _Fingerprints:
    """A picklable deferred ``fingerprints(encoder, image_size)``."""

    def __init__(self, encoder: DocumentEncoder, image_size: int) -> None:
        self.encoder, self.image_size = encoder, image_size

    def __call__(self) -> dict[str, str]:
        return fingerprints(self.encoder, self.image_size)
