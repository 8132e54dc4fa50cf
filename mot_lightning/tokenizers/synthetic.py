"""Synthetic but structured demo data: shape images, speech-like audio, sentences.

No dataset can be downloaded here, so ``mot tokenizer demo-data`` writes these as real
PNG / WAV / TXT files for the shipped configs, the tests and the benchmarks to fit on.
- images: smooth two-colour gradient background, 2-6 filled/outlined shapes (ellipses,
  rectangles, triangles, lines) in random colours;
- audio: voiced syllables (harmonics of a gliding 90-260 Hz pitch shaped by three moving
  formants), fricative noise bursts and pauses, 16 kHz mono;
- text: template sentences over a small vocabulary.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mot_lightning.tokenizers.media import write_audio

log = logging.getLogger("mot_lightning.tokenizers")

# (F1, F2, F3) in Hz of a few vowels; syllables glide between them
_VOWELS = np.array([[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240], [530, 1840, 2480], [570, 840, 2410]])


def shapes_image(rng: np.random.Generator, size: int = 64) -> Image.Image:
    """An RGB image: gradient background plus a few coloured shapes."""
    c0, c1 = rng.integers(0, 256, (2, 3))
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    grad = (c0 * (1 - t) + c1 * t).astype(np.uint8)  # (size, 1, 3) vertical gradient
    img = Image.fromarray(np.repeat(grad, size, axis=1), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 7))):
        _draw_shape(draw, rng, size)
    return img


def _draw_shape(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    color = tuple(int(c) for c in rng.integers(0, 256, 3))
    x0, y0 = rng.integers(-size // 8, size, 2)
    w, h = rng.integers(size // 8, size // 2, 2)
    box = [int(x0), int(y0), int(x0 + w), int(y0 + h)]
    kind = int(rng.integers(0, 4))
    outline = tuple(int(c) for c in rng.integers(0, 256, 3)) if rng.random() < 0.5 else None
    width = max(1, size // 32)
    if kind == 0:
        draw.ellipse(box, fill=color, outline=outline, width=width)
    elif kind == 1:
        draw.rectangle(box, fill=color, outline=outline, width=width)
    elif kind == 2:
        draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=color)
    else:
        draw.line(box, fill=color, width=max(2, size // 16))


def speech_like(rng: np.random.Generator, seconds: float = 2.0, sample_rate: int = 16000) -> np.ndarray:
    """float32[S] in [-1, 1]: syllables of harmonic voice with moving formants, fricatives and pauses."""
    n = int(seconds * sample_rate)
    out = np.zeros(n, dtype=np.float32)
    pos = int(rng.integers(0, sample_rate // 10))
    while pos < n:
        length = int(rng.uniform(0.12, 0.35) * sample_rate)
        seg = _voiced(rng, length, sample_rate) if rng.random() < 0.8 else _fricative(rng, length // 2, sample_rate)
        end = min(n, pos + len(seg))
        out[pos:end] += seg[: end - pos]
        pos = end + int(rng.uniform(0.0, 0.12) * sample_rate)  # pause
    return (0.9 * out / max(1e-6, float(np.abs(out).max()))).astype(np.float32)


def _voiced(rng: np.random.Generator, length: int, sr: int) -> np.ndarray:
    t = np.arange(length) / sr
    f0 = rng.uniform(90, 260) * (1 + rng.uniform(-0.25, 0.25) * t / max(t[-1], 1e-6))  # (S,) pitch glide
    phase = 2 * np.pi * np.cumsum(f0) / sr
    a, b = _VOWELS[rng.integers(0, len(_VOWELS), 2)]
    mix = (t / max(t[-1], 1e-6))[:, None]
    formants = a * (1 - mix) + b * mix  # (S, 3)
    k = np.arange(1, int(4000 // f0.max()) + 1)  # harmonics below 4 kHz
    freqs = f0[:, None] * k[None]  # (S, K)
    gain = sum(np.exp(-0.5 * ((freqs - formants[:, j:j + 1]) / (60 + 40 * j)) ** 2) / (j + 1) for j in range(3))
    wave = (gain * np.sin(phase[:, None] * k[None])).sum(1)
    env = np.sin(np.pi * np.arange(length) / length) ** 0.6  # syllable envelope
    return (wave * env).astype(np.float32)


def _fricative(rng: np.random.Generator, length: int, sr: int) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(length))
    freqs = np.fft.rfftfreq(length, 1 / sr)
    centre = rng.uniform(2500, 6000)
    spec *= np.exp(-0.5 * ((freqs - centre) / 1200) ** 2)
    noise = np.fft.irfft(spec, n=length)
    return (0.3 * noise / max(1e-6, np.abs(noise).max()) * np.hanning(length)).astype(np.float32)


_SUBJECTS = ["the cat", "a small robot", "my neighbour", "the red bird", "an old sailor", "the teacher"]
_VERBS = ["sees", "paints", "follows", "describes", "builds", "remembers"]
_OBJECTS = ["a blue circle", "three green squares", "the quiet river", "a tall tower", "the morning light"]
_TAILS = ["today.", "near the harbour.", "with great care.", "before sunset.", "again and again."]


def sentence(rng: np.random.Generator) -> str:
    parts = [_SUBJECTS, _VERBS, _OBJECTS, _TAILS]
    return " ".join(p[int(rng.integers(0, len(p)))] for p in parts).capitalize()


def write_demo_data(out: str | Path, images: int = 200, audio: int = 40, texts: int = 200,
                    image_size: int = 64, seconds: float = 2.0, seed: int = 0) -> dict[str, Path]:
    """Write ``out/images/*.png``, ``out/audio/*.wav``, ``out/text/*.txt``; returns the three folders."""
    rng = np.random.default_rng(seed)
    dirs = {name: Path(out) / name for name in ("images", "audio", "text")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    for i in range(images):
        shapes_image(rng, image_size).save(dirs["images"] / f"img{i:05d}.png")
    for i in range(audio):
        wave = speech_like(rng, seconds * rng.uniform(0.6, 1.4))
        write_audio(dirs["audio"] / f"utt{i:05d}.wav", _as_tensor(wave), 16000)
    for i in range(texts):
        body = " ".join(sentence(rng) for _ in range(int(rng.integers(2, 8))))
        (dirs["text"] / f"doc{i:05d}.txt").write_text(body + "\n", encoding="utf-8")
    log.info("wrote %d images, %d audio files, %d texts under %s", images, audio, texts, out)
    return dirs


def _as_tensor(wave: np.ndarray):
    import torch

    return torch.from_numpy(wave)
