"""Media folders from the demo world, for fitting tokenizers on real files.

``write_media_folders(out)`` writes

- ``out/images/img00000.png``  renders of training scenes (``held_out=False``);
- ``out/audio/utt00000.wav``   spoken captions of training scenes (16 kHz mono, 16-bit);
- ``out/text/doc00000.txt``    descriptions (captions and a question), one per file;

the same world the demo corpus' shards show, at any image size. Same arguments ->
byte-identical files.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from mot_lightning.world import speech
from mot_lightning.world.scenes import description, random_scene, render

log = logging.getLogger("mot_lightning.world")


def write_media_folders(out: str | Path, images: int = 1000, audio: int = 60, texts: int = 300,
                        image_size: int = 64, seed: int = 0, voice: str = "builtin") -> dict[str, Path]:
    """Write the three folders under ``out``; returns ``{"images": ..., "audio": ..., "text": ...}``.

    ``voice``: ``"builtin"`` (the deterministic synthesizer) or ``"espeak"`` (needs espeak-ng).
    """
    if voice not in ("builtin", "espeak"):
        raise ValueError(f"voice must be 'builtin' or 'espeak', got {voice!r}")
    dirs = {name: Path(out) / name for name in ("images", "audio", "text")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{seed}-images")  # one generator per kind: more images leave the audio alone
    for i in range(images):
        png = render(random_scene(rng, held_out=False), image_size)
        (dirs["images"] / f"img{i:05d}.png").write_bytes(png)
    rng = random.Random(f"{seed}-audio")
    say = speech.espeak if voice == "espeak" else speech.synthesize
    for i in range(audio):
        caption = random_scene(rng, held_out=False).caption(rng)
        (dirs["audio"] / f"utt{i:05d}.wav").write_bytes(speech.wav_bytes(say(caption)))
    rng = random.Random(f"{seed}-text")
    for i in range(texts):
        text = description(rng, held_out=False)
        (dirs["text"] / f"doc{i:05d}.txt").write_text(text + "\n", encoding="utf-8")
    log.info("wrote %d images, %d audio files, %d texts under %s", images, audio, texts, out)
    return dirs
