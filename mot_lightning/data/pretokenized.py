"""Pre-tokenized documents: joint ids (and image latents) stored as plain arrays, stamped with the
fingerprints of the tokenizers that made them.

``mot data tokenize`` (``tokenize_shards.py``) writes samples that each hold a
*chunk* of consecutive documents (16 by default: one tar member and one array
header for many documents keeps reading cheap): ``<key>.tok.npy``, plus
``<key>.lat.npy`` with continuous images; both are ``numpy.save`` arrays read back
as ``numpy.load(allow_pickle=False)`` reads them (nothing is ever unpickled).
``tok.npy`` is ``int32[HEADER + 2 N + sum n_i + 2 sum S_i]``:

- a header: a magic number and version, ``N`` (documents), then the 64-bit
  fingerprints of the layout and of the text, image and speech tokenizers (two int32
  words each, 0 where there is none);
- a table of ``(n_i, S_i)`` per document: its ids and its pieces;
- every document's ``ids``, joint ids ``BOS ... EOS`` as ``DocumentEncoder.encode`` lays
  them out, one after the other;
- every document's ``pieces``: (modality id, length) of each segment's ids (with its
  boundary tokens), in order; ``BOS``/``EOS`` are outside them. They let the stream
  apply a source's modality filter and caption dropout as it does to raw documents.

``lat.npy`` is ``float32[L, D]``: the latent patch of each ``latent_id`` position of the
chunk, in order.

Fingerprints: ``layout`` hashes the joint vocabulary (sizes, special ids, latent or
discrete images), the image side and the audio sample rate; each modality's entry hashes
the tokenizer's saved file content (class, config and weights; fit metrics left out).
A document is refused, with a message naming the tokenizer that differs, unless the
layout and the tokenizer of every modality its source keeps match the configured ones:
ids from another tokenizer would train silently on the wrong codes.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from collections.abc import Callable, Sequence

import numpy as np
import torch

from mot_lightning.data.counters import NullCounters
from mot_lightning.data.documents import SAMPLE_RATE, BadSample, SourceUnusable
from mot_lightning.data.encode import DocumentEncoder
from mot_lightning.data.packing import Doc, LatentDoc
from mot_lightning.data.vocab import SPECIAL_TOKENS, JointVocab
from mot_lightning.modality import Modality
from mot_lightning.shards.reader import shard_samples
from mot_lightning.shards.urls import is_local
from mot_lightning.tokenizers.base import Tokenizer

MEMBER = "tok.npy"  # the sample field of a pre-tokenized document (``<key>.tok.npy`` in the tar)
LATENTS = "lat.npy"  # its latent patches (continuous images only)
MAGIC, VERSION = 0x4D6F54, 1  # "MoT"
STAMPED = ("layout", *(m.label for m in Modality))  # fingerprints in the header, in this order
HEADER = 4 + 2 * len(STAMPED)  # magic, version, N, 0, then two words per fingerprint
NPY_ERRORS = (ValueError, OSError, EOFError, TypeError)


class FingerprintMismatch(SourceUnusable, ValueError):
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
    """Hash of the joint vocabulary's layout (sizes, special ids, latent id), the image side and the rate."""
    specials = [vocab.special(name) for name in SPECIAL_TOKENS]
    text = f"{vocab!r}|specials={specials}|latent={vocab.latent_id if vocab.image_latent else None}"
    text += f"|image={image_size}|rate={SAMPLE_RATE}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprints(encoder: DocumentEncoder, image_size: int) -> dict[str, str]:
    """The layout's and every configured tokenizer's fingerprint (modality labels as keys)."""
    out = {"layout": layout_fingerprint(encoder.vocab, image_size)}
    out.update({m.label: tokenizer_fingerprint(t) for m, t in encoder.tokenizers.items() if t is not None})
    return out


# --- writing ------------------------------------------------------------------------
def pack_documents(docs: Sequence[tuple[Doc, Sequence[tuple[Modality, int]]]], fingerprint: dict[str, str],
                   vocab: JointVocab) -> dict[str, bytes]:
    """The members of one chunk (``{"tok.npy": ..., "lat.npy": ...}``) from encoded documents (``long[n]``
    BOS ... EOS, or ``LatentDoc``) each with the (modality, length) of its pieces in order."""
    table, ids, pieces, latents = [], [], [], []
    for doc, doc_pieces in docs:
        doc_ids = doc.ids if isinstance(doc, LatentDoc) else doc
        if sum(n for _, n in doc_pieces) + 2 != len(doc_ids):
            raise ValueError(f"pieces cover {sum(n for _, n in doc_pieces)} ids, the document has "
                             f"{len(doc_ids) - 2} between BOS and EOS")
        table += [len(doc_ids), len(doc_pieces)]
        ids += doc_ids.tolist()
        pieces += [x for m, n in doc_pieces for x in (int(m), n)]
        if isinstance(doc, LatentDoc):
            latents.append(doc.latents[doc_ids == vocab.latent_id].float())  # (L_i, D)
    stamp = [w for name in STAMPED for w in _words(fingerprint.get(name))]
    flat = np.array([MAGIC, VERSION, len(docs), 0, *stamp, *table, *ids, *pieces], dtype=np.int64)
    members = {MEMBER: _npy(flat.astype(np.int32))}
    if latents:
        members[LATENTS] = _npy(torch.cat(latents).numpy())
    return members


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _words(fingerprint: str | None) -> list[int]:
    """A fingerprint's 64-bit hash (its first 16 hex digits) as two int32 words; (0, 0) for none."""
    value = 0 if fingerprint is None else int(fingerprint.rsplit(":", 1)[-1][:16], 16)
    return np.array([value], dtype=np.uint64).view(np.int32).tolist()


def _hex(words: np.ndarray) -> str:
    return f"{int(np.ascontiguousarray(words, dtype=np.int32).view(np.uint64)[0]):016x}"


# --- reading ------------------------------------------------------------------------
class PretokenizedReader:
    """Turns ``<key>.tok.npy`` samples back into documents, checking their fingerprints."""

    def __init__(self, vocab: JointVocab, expected: Callable[[], dict[str, str]], latent_dim: int = 0) -> None:
        self.vocab, self.latent_dim = vocab, latent_dim
        self._expected_fn: Callable[[], dict[str, str]] | None = expected
        self._expected: dict[str, str] | None = None
        self._accepted: set[tuple[bytes, frozenset]] = set()  # (stamp, kept modalities) already checked

    @classmethod
    def for_encoder(cls, encoder: DocumentEncoder, image_size: int) -> PretokenizedReader:
        """Expected fingerprints are computed when first needed (raw-only streams never pay for them)."""
        return cls(encoder.vocab, _Fingerprints(encoder, image_size), encoder.latent_dim)

    @property
    def expected(self) -> dict[str, str]:
        if self._expected is None:
            self._expected = self._expected_fn()
        return self._expected

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_accepted"] = set()
        return state

    def check_source(self, source) -> None:
        """Refuse a pre-tokenized source made with other tokenizers before any worker reads it: decodes the
        first document of its first shard (local shards; a remote one is checked by the stream, which reads
        it anyway). A damaged chunk is left to the stream, which counts it."""
        if not is_local(source.urls[0]):
            return
        first = next(iter(shard_samples(source.urls[:1], NullCounters())), None)
        if first is not None and self.holds(first):
            try:
                self.decode(first, source.keep, lambda modalities: False)
            except BadSample:
                pass

    @staticmethod
    def holds(sample: dict) -> bool:
        return MEMBER in sample

    def decode(self, sample: dict, keep: frozenset[Modality],
               drop_text: Callable[[list[Modality]], bool]) -> list[tuple[Doc | None, int] | BadSample]:
        """Per document of the chunk, in order: (the document, or None when the modality filter left
        nothing; the number of segments the filter dropped), or the ``BadSample`` that document is.
        A damaged chunk raises ``BadSample``; other tokenizers raise ``FingerprintMismatch``."""
        key, url = sample.get("__key__", "?"), sample.get("__url__", "?")
        flat = self._load(sample, MEMBER, key, url)
        if flat.ndim != 1 or flat.dtype != np.int32 or len(flat) < HEADER or flat[0] != MAGIC or flat[1] != VERSION:
            raise BadSample("bad_pretokenized", f"{url} {key}: not a version-{VERSION} {MEMBER} array")
        table = flat[HEADER:HEADER + 2 * int(flat[2])].reshape(-1, 2).astype(np.int64)  # (N, 2): n_i, S_i
        ids_end = HEADER + 2 * len(table) + int(table[:, 0].sum())
        if len(table) != int(flat[2]) or len(flat) != ids_end + 2 * int(table[:, 1].sum()):
            raise BadSample("bad_pretokenized", f"{url} {key}: the document table does not match the array")
        ids = torch.from_numpy(flat[HEADER + 2 * len(table):ids_end].astype(np.int64))
        pieces = flat[ids_end:].reshape(-1, 2)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab.size):
            raise BadSample("bad_pretokenized", f"{url} {key}: ids outside the joint vocabulary")
        modalities = self._check(flat[4:HEADER], keep, pieces, url, key)
        latents = self._latents(ids, sample, url, key)
        out, id_start, piece_start = [], 0, 0
        for i, (n, n_pieces) in enumerate(table.tolist()):
            span = slice(piece_start, piece_start + n_pieces)
            doc_ids = ids[id_start:id_start + n]
            doc_latents = None if latents is None else latents[id_start:id_start + n]
            try:
                out.append(self._document(doc_ids, doc_latents, pieces[span, 1], modalities[span], keep,
                                          drop_text, f"{url} {key}#{i}"))
            except BadSample as bad:
                out.append(bad)
            id_start, piece_start = id_start + n, piece_start + n_pieces
        return out

    def _document(self, ids: torch.Tensor, latents: torch.Tensor | None, lengths: np.ndarray,
                  modalities: list[Modality], keep: frozenset[Modality], drop_text, where: str):
        if int(lengths.sum()) + 2 != len(ids):
            raise BadSample("bad_pretokenized", f"{where}: ids do not match their pieces")
        kept = [i for i, m in enumerate(modalities) if m in keep]
        dropped = len(modalities) - len(kept)
        if not kept:
            if dropped:
                return None, dropped
            raise BadSample("empty_doc", f"{where}: no segment")
        if drop_text([modalities[i] for i in kept]):
            kept = [i for i in kept if modalities[i] != Modality.TEXT]
        if len(kept) == len(modalities):  # the usual case, every piece kept: one copy, no per-piece slicing
            # (a copy, not a view: a view would keep the whole chunk alive in the shuffle buffer)
            return (ids.clone() if latents is None else LatentDoc(ids.clone(), latents.clone())), dropped
        starts = np.cumsum([1, *lengths.tolist()])  # piece i spans starts[i] .. starts[i+1]
        spans = [(0, 1), *((int(starts[i]), int(starts[i + 1])) for i in kept), (len(ids) - 1, len(ids))]
        out = torch.cat([ids[a:b] for a, b in spans])
        if latents is None:
            return out, dropped
        return LatentDoc(out, torch.cat([latents[a:b] for a, b in spans])), dropped

    @staticmethod
    def _load(sample: dict, member: str, key: str, url: str) -> np.ndarray:
        raw = sample[member]
        try:
            return _fast_npy(raw) if raw[:8] == _NPY_V1 else np.load(io.BytesIO(raw), allow_pickle=False)
        except NPY_ERRORS as err:
            raise BadSample("bad_pretokenized", f"{url} {key}.{member}: {type(err).__name__}: {err}") from None

    def _check(self, stamp: np.ndarray, keep: frozenset[Modality], pieces: np.ndarray, url: str,
               key: str) -> list[Modality]:
        """The pieces' modalities, once the stamp's layout and the tokenizers of the modalities the source
        keeps match the configured ones (checked once per stamp and filter)."""
        try:
            modalities = [Modality(int(m)) for m in pieces[:, 0]]
        except ValueError:
            raise BadSample("bad_pretokenized", f"{url} {key}: unknown modality id in pieces") from None
        token = (stamp.tobytes(), keep)
        if token in self._accepted:
            return modalities
        made_with = {name: stamp[2 * i:2 * i + 2] for i, name in enumerate(STAMPED)}
        names = ["layout", *(m.label for m in sorted(keep))]
        differ = [n for n in names if made_with[n].tolist() != _words(self.expected.get(n))]
        if differ:
            detail = "; ".join(f"{n}: shard {_hex(made_with[n])}, configured "
                               f"{self.expected.get(n, 'none')}" for n in differ)
            what = " and ".join("the joint vocabulary layout" if n == "layout" else f"the {n} tokenizer"
                                for n in differ)
            raise FingerprintMismatch(
                f"pre-tokenized shard {url} (sample {key}) was made with other tokenizers: {what} "
                f"{'differs' if len(differ) == 1 else 'differ'} ({detail}). Re-run `mot data tokenize --config "
                "<this config>` or configure the tokenizers that made these shards")
        self._accepted.add(token)
        return modalities

    def _latents(self, ids: torch.Tensor, sample: dict, url: str, key: str) -> torch.Tensor | None:
        """float[n, D] with the stored patches at latent positions (None without latent images)."""
        if not self.vocab.image_latent:
            return None
        at = ids == self.vocab.latent_id
        if not bool(at.any()):
            return torch.zeros(len(ids), self.latent_dim)
        latents = self._load(sample, LATENTS, key, url) if LATENTS in sample else None
        if latents is None or latents.ndim != 2 or latents.dtype != np.float32 or len(latents) != int(at.sum()):
            raise BadSample("bad_pretokenized", f"{url} {key}: latents do not match the latent positions")
        full = torch.zeros(len(ids), latents.shape[1])
        full[at] = torch.from_numpy(latents.copy())  # the read-only bytes of the member
        return full


_NPY_V1 = b"\x93NUMPY\x01\x00"
_NPY_HEADER = re.compile(rb"\{'descr': '(<i4|<f4)', 'fortran_order': False, 'shape': \((\d+),(?: (\d+))?\), \} *\n")


def _fast_npy(raw: bytes) -> np.ndarray:
    """A version-1.0 ``.npy`` of little-endian int32/float32 as ``numpy.save`` writes it, without
    ``numpy.load``'s general header parser (a third of the read time); anything else goes to
    ``numpy.load(allow_pickle=False)``."""
    size = int.from_bytes(raw[8:10], "little")
    match = _NPY_HEADER.fullmatch(raw[10:10 + size])
    if match is None:
        return np.load(io.BytesIO(raw), allow_pickle=False)
    shape = tuple(int(g) for g in match.groups()[1:] if g is not None)
    return np.frombuffer(raw, dtype=match.group(1).decode(), count=int(np.prod(shape)), offset=10 + size).reshape(shape)


class _Fingerprints:
    """A picklable deferred ``fingerprints(encoder, image_size)``."""

    def __init__(self, encoder: DocumentEncoder, image_size: int) -> None:
        self.encoder, self.image_size = encoder, image_size

    def __call__(self) -> dict[str, str]:
        return fingerprints(self.encoder, self.image_size)


# --- checkpoints: the tokenizers a model was trained with --------------------------------------
# Tokenizers bound to checkpoints: a checkpoint records a fingerprint of every tokenizer it was trained with
# (``pretokenized.tokenizer_fingerprint``: a hash of what the tokenizer saves) and the file each fitted one
# came from; a launch that restores it with tokenizers that differ is refused, naming the files.
#
# A same-shaped tokenizer fitted on other data gives the model other codes for the same pixels or sounds: its
# weights load without complaint and ``val/loss_image`` is meaningless. ``--accept_other_tokenizers true``
# (``mot fit|validate|test``; ``mot generate --accept-other-tokenizers``) is for users who mean it.
# Checkpoints written before tokenizers were recorded carry no stamp and are accepted.

STAMP_KEY = "tokenizers"  # in the data module's checkpoint state


class TokenizerMismatch(ValueError):
    """The checkpoint was trained with other tokenizers than this launch's."""


def tokenizer_stamp(encoder: DocumentEncoder, files: dict[Modality, str]) -> dict[str, dict[str, str | None]]:
    """``{modality: {"fingerprint": "<Class>:<hex>", "file": path or None}}`` of every configured tokenizer."""
    return {m.label: {"fingerprint": tokenizer_fingerprint(tok), "file": files.get(m)}
            for m, tok in encoder.tokenizers.items() if tok is not None}


def stamped_files(checkpoint: dict, owner: str) -> dict[Modality, str]:
    """Modality -> the fitted tokenizer file a checkpoint was trained with, as its data module (class name
    ``owner``) recorded it, for each such file that exists here."""
    stamp = (checkpoint.get(owner) or {}).get(STAMP_KEY) or {}
    return {Modality.parse(label): entry["file"] for label, entry in stamp.items()
            if isinstance(entry, dict) and entry.get("file") and os.path.isfile(entry["file"])}


def check_tokenizers(saved: dict | None, current: dict, accept: bool = False, source: str = "the checkpoint") -> None:
    """Refuse ``current`` tokenizers that differ from the ``saved`` stamp (None: an older checkpoint, accepted)."""
    if not saved:
        return
    differ = [f"{label}: {source} was trained with {s['fingerprint']} ({s.get('file') or 'built in'}), this "
              f"launch has {current[label]['fingerprint'] if label in current else 'none'} "
              f"({(current.get(label) or {}).get('file') or 'built in'})"
              for label, s in saved.items() if (current.get(label) or {}).get("fingerprint") != s["fingerprint"]]
    if differ and not accept:
        raise TokenizerMismatch(
            "tokenizers differ from those the checkpoint was trained with:\n  " + "\n  ".join(differ)
            + "\nPoint data.tokenizer_files (dir or files) at the checkpoint's tokenizer files, or pass "
            "--accept_other_tokenizers true (mot generate: --accept-other-tokenizers) if you mean it")
