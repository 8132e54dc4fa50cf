"""Load any tokenizer file without knowing its class (the file records its kind)."""
from __future__ import annotations

import os

from mot_lightning.tokenizers.base import Tokenizer, TokenizerFileError
from mot_lightning.tokenizers.files import read_tokenizer_file


def tokenizer_classes() -> dict[str, type[Tokenizer]]:
    from mot_lightning.tokenizers.hf_text import HFTextTokenizer
    from mot_lightning.tokenizers.image_kmeans import KMeansImageTokenizer
    from mot_lightning.tokenizers.latent import LatentImageTokenizer
    from mot_lightning.tokenizers.pretrained import DiffusersKLTokenizer, DiffusersVQTokenizer
    from mot_lightning.tokenizers.speech import SpeechUnitTokenizer
    from mot_lightning.tokenizers.text import BPETokenizer, ByteTokenizer
    from mot_lightning.tokenizers.vqvae import VQImageTokenizer

    classes = [ByteTokenizer, BPETokenizer, KMeansImageTokenizer, VQImageTokenizer, SpeechUnitTokenizer,
               LatentImageTokenizer, DiffusersVQTokenizer, DiffusersKLTokenizer, HFTextTokenizer]
    return {c.__name__: c for c in classes}


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Read ``path`` (weights-only) and return the tokenizer of the kind it holds."""
    kind = read_tokenizer_file(path)["kind"]
    classes = tokenizer_classes()
    if kind not in classes:
        raise TokenizerFileError(f"{str(path)!r} holds an unknown tokenizer kind {kind!r}; known: {sorted(classes)}")
    return classes[kind].load(str(path))
