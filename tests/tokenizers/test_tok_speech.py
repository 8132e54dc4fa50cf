from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile
import torch
import torchaudio.functional as AF

from mot_lightning.tokenizers import SpeechUnitTokenizer
from mot_lightning.tokenizers.media import read_audio
from mot_lightning.tokenizers.synthetic import speech_like


def _logmel_corr(tok: SpeechUnitTokenizer, a: torch.Tensor, b: torch.Tensor) -> float:
    fa, fb = tok.features(tok.prepare(a)), tok.features(tok.prepare(b))
    return float(torch.corrcoef(torch.stack([fa.flatten(), fb.flatten()]))[0, 1])


def test_fit_metrics(speech_units):
    _, metrics = speech_units
    assert metrics["held_out_logmel_corr"] > 0.9 and metrics["codebook_usage"] > 0.2


def test_units_rate_decode_length_and_mel_correlation(speech_units):
    tok, _ = speech_units
    wave = torch.from_numpy(speech_like(np.random.default_rng(7), 1.3))  # unseen utterance, 20800 samples
    ids = tok.encode(wave)
    assert ids.shape == (math.ceil(20800 / 640),) == (tok.num_tokens(wave),)  # 25 units per second
    out = tok.decode(ids)
    assert out.shape == (ids.numel() * 640,) and out.abs().max() <= 1.0
    assert tok.decode(ids, num_samples=20800).shape == (20800,)
    # stated: decoded audio's log-mel correlates with the input's (r > 0.8; ~0.9 measured)
    assert _logmel_corr(tok, wave, out[:20800]) > 0.8
    shuffled = tok.decode(ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(0))])
    assert _logmel_corr(tok, wave, out[:20800]) > _logmel_corr(tok, wave, shuffled[:20800]) + 0.1


def test_stereo_44k_file_encodes_like_the_16k_mono_original(speech_units, tmp_path):
    tok, _ = speech_units
    mono16 = torch.from_numpy(speech_like(np.random.default_rng(3), 1.0))
    up = AF.resample(mono16, 16000, 44100)
    soundfile.write(tmp_path / "st.wav", torch.stack([up, up]).T.numpy(), 44100, subtype="PCM_16")
    from_file = tok.encode(tmp_path / "st.wav")
    wave, rate = read_audio(tmp_path / "st.wav")
    assert torch.equal(from_file, tok.encode(wave, sample_rate=rate))
    direct = tok.encode(mono16)
    assert from_file.shape == direct.shape
    assert (from_file == direct).float().mean() > 0.7  # resampling noise flips a few units only


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
