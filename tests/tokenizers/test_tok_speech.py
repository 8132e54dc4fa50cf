from __future__ import annotations

import math
import random

import pytest
import soundfile
import torch
import torchaudio.functional as AF

from mot_lightning.tokenizers import SpeechUnitTokenizer
from mot_lightning.tokenizers.media import read_audio
from mot_lightning.world.captions import caption
from mot_lightning.world.procedural import random_scene
from mot_lightning.world.speech import synthesize


def _spoken_caption(seed: int) -> torch.Tensor:
    """float[S] at 16 kHz: a caption of a fresh one-group scene, as the demo world speaks them (the fixtures'
    utterances use other seeds)."""
    rng = random.Random(f"speech-test-{seed}")
    return torch.from_numpy(synthesize(caption(random_scene(rng, held_out=False, max_groups=1), rng)))


def _logmel_corr(tok: SpeechUnitTokenizer, a: torch.Tensor, b: torch.Tensor) -> float:
    fa, fb = tok.features(tok.prepare(a)), tok.features(tok.prepare(b))
    return float(torch.corrcoef(torch.stack([fa.flatten(), fb.flatten()]))[0, 1])


def test_fit_metrics(speech_units):
    _, metrics = speech_units
    # spoken captions reuse one fixed sound per letter: held-out log-mel r ~0.998, 41 of 64 codes used
    assert metrics["held_out_logmel_corr"] > 0.97 and metrics["codebook_usage"] > 0.4


def test_units_rate_decode_length_and_mel_correlation(speech_units):
    tok, _ = speech_units
    wave = _spoken_caption(7)  # unseen utterance
    n = len(wave)
    assert n % 640 != 0  # the last unit is padded
    ids = tok.encode(wave)
    assert ids.shape == (math.ceil(n / 640),) == (tok.num_tokens(wave),)  # 25 units per second
    out = tok.decode(ids)
    assert out.shape == (ids.numel() * 640,) and out.abs().max() <= 1.0
    assert tok.decode(ids, num_samples=n).shape == (n,)
    # stated: decoded audio's log-mel correlates with the input's (r > 0.95; 0.985 measured, shuffled 0.25)
    assert _logmel_corr(tok, wave, out[:n]) > 0.95
    shuffled = tok.decode(ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(0))])
    assert _logmel_corr(tok, wave, out[:n]) > _logmel_corr(tok, wave, shuffled[:n]) + 0.5


def test_stereo_44k_file_encodes_like_the_16k_mono_original(speech_units, tmp_path):
    tok, _ = speech_units
    mono16 = _spoken_caption(3)
    up = AF.resample(mono16, 16000, 44100)
    soundfile.write(tmp_path / "st.wav", torch.stack([up, up]).T.numpy(), 44100, subtype="PCM_16")
    from_file = tok.encode(tmp_path / "st.wav")
    wave, rate = read_audio(tmp_path / "st.wav")
    assert torch.equal(from_file, tok.encode(wave, sample_rate=rate))
    direct = tok.encode(mono16)
    assert from_file.shape == direct.shape
    assert (from_file == direct).float().mean() > 0.9  # resampling noise flips a few units only (98% agree)


def test_empty_and_tiny_audio(speech_units):
    tok, _ = speech_units
    with pytest.raises(ValueError, match="empty"):
        tok.encode(torch.zeros(0))
    with pytest.raises(ValueError, match="empty"):
        tok.num_tokens(torch.zeros(0))
    assert tok.encode(torch.zeros(10)).shape == (1,)  # shorter than one unit: padded to one
    assert tok.decode(torch.zeros(0, dtype=torch.long)).numel() == 0


def test_save_load_bit_identical(speech_units, demo_dirs, tmp_path):
    tok, _ = speech_units
    tok.save(str(tmp_path / "sp.pt"))
    loaded = SpeechUnitTokenizer.load(str(tmp_path / "sp.pt"))
    for f in sorted(demo_dirs["audio"].glob("*.wav"))[:3]:
        assert torch.equal(loaded.encode(f), tok.encode(f))
    ids = tok.encode(min(demo_dirs["audio"].glob("*.wav")))[:8]
    assert torch.equal(loaded.decode(ids), tok.decode(ids))  # Griffin-Lim from zero phase: deterministic
