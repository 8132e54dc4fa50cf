"""Media folders from the demo world, for fitting tokenizers on real files.

``write_media_folders(out)`` writes

- ``out/images/img00000.png``  renders of training scenes (the images of the ``image_caption`` stream);
- ``out/audio/utt00000.wav``   spoken captions of training scenes (16 kHz mono, 16-bit; the
  ``speech_caption`` stream);
- ``out/text/doc00000.txt``    a caption and questions with answers, one document per file (the
  ``text`` stream);

the first documents of the demo world's training streams (``virtual.documents``, what the demo corpus'
shards hold), at any image size. Same arguments -> byte-identical files.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mot_lightning.world import virtual

log = logging.getLogger("mot_lightning.world")


def write_media_folders(out: str | Path, images: int = 1000, audio: int = 60, texts: int = 300,
                        image_size: int = 64, seed: int = 0, voice: str = "builtin") -> dict[str, Path]:
    """Write the three folders under ``out``; returns ``{"images": ..., "audio": ..., "text": ...}``.

    ``voice``: ``"builtin"`` (the deterministic synthesizer) or ``"espeak"`` (needs espeak-ng).
    """
    if voice not in virtual.VOICES:
        raise ValueError(f"voice must be one of {virtual.VOICES}, got {voice!r}")
    dirs = {name: Path(out) / name for name in ("images", "audio", "text")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    # one stream per kind: more images leave the audio alone
    for kind, n, folder, name, member in (("image_caption", images, "images", "img{:05d}.png", "png"),
                                          ("speech_caption", audio, "audio", "utt{:05d}.wav", "wav"),
                                          ("text", texts, "text", "doc{:05d}.txt", "txt")):
        for i, doc in enumerate(virtual.documents("train", kind, n, seed, size=image_size, voice=voice)):
            data = doc[member] + b"\n" if member == "txt" else doc[member]
            (dirs[folder] / name.format(i)).write_bytes(data)
    log.info("wrote %d images, %d audio files, %d texts under %s", images, audio, texts, out)
    return dirs
