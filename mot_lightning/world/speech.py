"""Speech of the demo world: a built-in deterministic synthesizer, or espeak-ng when asked.

The built-in synthesizer is not meant to sound like a person; it gives every
letter a fixed, distinguishable sound so that spoken captions carry the
caption's content and a speech tokenizer has structure to learn:

- vowels (a e i o u y): 90 ms of a 120 Hz harmonic buzz shaped by two formant
  resonances (a per-vowel (F1, F2) table, like a crude formant vocoder);
- consonants: 60 ms of noise from a fixed per-letter seed, coloured by a
  per-letter one-pole low-pass; voiced ones (b d g j l m n r v w z) add a
  quieter buzz;
- digits are spelled out by the caption text already; space is 50 ms of
  silence, punctuation 120 ms;
- every sound gets 5 ms raised-cosine fades. Output: float32 mono at 16 kHz
  in [-1, 1]. The same text always gives the same samples.
"""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
import tempfile

import numpy as np
import soundfile
import torch
import torchaudio.functional

SAMPLE_RATE = 16_000
_F0 = 120.0
_FORMANTS = {
    "a": (730, 1090),
    "e": (530, 1840),
    "i": (270, 2290),
    "o": (570, 840),
    "u": (300, 870),
    "y": (300, 2000),
}
_VOICED = set("bdgjlmnrvwz")
_FADE = int(0.005 * SAMPLE_RATE)


def synthesize(text: str) -> np.ndarray:
    """``float32[samples]`` at 16 kHz for ``text`` (deterministic)."""
    sounds = [_sound(ch) for ch in text.lower()]
    wave = np.concatenate(sounds) if sounds else np.zeros(0, np.float32)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


@functools.cache
def _sound(ch: str) -> np.ndarray:
    if ch in _FORMANTS:
        return _fade(_vowel(*_FORMANTS[ch], seconds=0.09))
    if ch.isalpha():
        return _fade(_consonant(ch, seconds=0.06))
    seconds = 0.05 if ch.isspace() else 0.12
    return np.zeros(int(seconds * SAMPLE_RATE), np.float32)


def _vowel(f1: float, f2: float, seconds: float, gain: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    harmonics = np.arange(1, int(4000 / _F0) + 1) * _F0  # (H,)
    resonance = 1 / (1 + ((harmonics - f1) / 90) ** 2) + 0.6 / (1 + ((harmonics - f2) / 120) ** 2)
    wave = (resonance[:, None] * np.sin(2 * np.pi * harmonics[:, None] * t[None])).sum(axis=0)  # (N,)
    return (gain * wave / np.abs(wave).max()).astype(np.float32)


def _consonant(ch: str, seconds: float) -> np.ndarray:
    n = int(seconds * SAMPLE_RATE)
    noise = np.random.default_rng(ord(ch)).standard_normal(n)
    alpha = 0.15 + 0.8 * ((ord(ch) - ord("a")) % 13) / 13  # per-letter colour
    coloured = np.empty(n)
    acc = 0.0
    for i, x in enumerate(noise):  # one-pole low-pass; n is ~1000 so a loop is fine (cached per letter)
        acc = alpha * acc + (1 - alpha) * x
        coloured[i] = acc
    wave = 0.25 * coloured / np.abs(coloured).max()
    if ch in _VOICED:
        wave = wave + _vowel(250, 1200 + 40 * (ord(ch) % 10), seconds, gain=0.2)
    return wave.astype(np.float32)


def _fade(wave: np.ndarray) -> np.ndarray:
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, _FADE))
    wave = wave.copy()
    wave[:_FADE] *= ramp
    wave[-_FADE:] *= ramp[::-1]
    return wave


def espeak(text: str, voice: str = "en") -> np.ndarray:
    """Speech from espeak-ng (when installed), resampled to 16 kHz mono."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError(
            "speech='espeak' needs the espeak-ng program (apt-get install espeak-ng); "
            "or use the built-in synthesizer (speech='builtin')"
        )
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        subprocess.run([exe, "-v", voice, "-w", tmp.name, text], check=True, capture_output=True)
        data, rate = soundfile.read(tmp.name, dtype="float32", always_2d=True)
    wave = torch.from_numpy(data).mean(dim=1)
    if rate != SAMPLE_RATE:
        wave = torchaudio.functional.resample(wave, rate, SAMPLE_RATE)
    return wave.numpy()


def wav_bytes(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """16-bit PCM WAV bytes."""
    buf = io.BytesIO()
    soundfile.write(buf, wave, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()
