"""Speech units (HuBERT-iteration-0 style): log-mel frames pooled to ``unit_rate`` Hz, k-means codebook.

encode: wave -> 16 kHz mono -> log-mel (torchaudio) at ``frame_rate`` Hz -> mean-pool groups of
``frame_rate / unit_rate`` frames -> standardise -> nearest code -> long[U].
decode: codes -> their mean log-mel -> repeat to frame rate -> InverseMelScale -> Griffin-Lim
-> float[U * samples_per_unit] (deterministic: Griffin-Lim starts from zero phase).
One unit covers ``sample_rate / unit_rate`` samples (640 at 16 kHz and 25 Hz); inputs are
zero-padded up to whole units, so ``decode(encode(x))`` has ``num_tokens(x) * samples_per_unit``
samples (pass ``num_samples=len(x)`` to trim to the input length).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torchaudio.transforms as AT

from mot_lightning.modality import Modality
from mot_lightning.tokenizers import fit_inputs
from mot_lightning.tokenizers.base import DiscreteTokenizer
from mot_lightning.tokenizers.files import (
    config_from_payload,
    read_tokenizer_file,
    require_state,
    save_tokenizer_file,
)
from mot_lightning.tokenizers.fitting import FitData, FittableTokenizer, TrainConfig
from mot_lightning.tokenizers.kmeans import kmeans, nearest
from mot_lightning.tokenizers.media import AUDIO_EXTS, prepare_audio

log = logging.getLogger("mot_lightning.tokenizers")
LOG_EPS = 1e-6  # floor of the mel power before the log


@dataclass
class SpeechUnitConfig:
    sample_rate: int = 16000  # every input is resampled to this, mono
    frame_rate: int = 100  # mel frames per second (hop = sample_rate / frame_rate)
    unit_rate: int = 25  # units (tokens) per second; frame_rate must be a multiple
    n_fft: int = 400  # 25 ms window at 16 kHz
    n_mels: int = 80
    codebook_size: int = 256
    iters: int = 25  # k-means iterations
    max_frames: int = 200_000  # pooled frames sampled for k-means
    griffin_lim_iters: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.sample_rate % self.frame_rate or self.frame_rate % self.unit_rate:
            raise ValueError(
                f"need sample_rate % frame_rate == 0 and frame_rate % unit_rate == 0, got "
                f"{self.sample_rate}, {self.frame_rate}, {self.unit_rate}"
            )

    @property
    def hop_length(self) -> int:
        return self.sample_rate // self.frame_rate

    @property
    def frames_per_unit(self) -> int:
        return self.frame_rate // self.unit_rate

    @property
    def samples_per_unit(self) -> int:
        return self.hop_length * self.frames_per_unit


class SpeechUnitTokenizer(DiscreteTokenizer, FittableTokenizer):
    modality = Modality.SPEECH

    def __init__(self, config: SpeechUnitConfig | None = None) -> None:
        self.config = config or SpeechUnitConfig()
        c = self.config
        self._mel = AT.MelSpectrogram(c.sample_rate, n_fft=c.n_fft, hop_length=c.hop_length, n_mels=c.n_mels, power=2.0)
        self._mel_pinv: torch.Tensor | None = None
        self.codebook: torch.Tensor | None = None  # float[K, n_mels], standardised log-mel
        self.mean: torch.Tensor | None = None  # float[n_mels]
        self.std: torch.Tensor | None = None  # float[n_mels]

    @property
    def is_fitted(self) -> bool:
        return self.codebook is not None

    @property
    def vocab_size(self) -> int:
        return self.config.codebook_size

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    # ---------------------------------------------------------------- features
    def prepare(self, raw: Any, sample_rate: int | None = None) -> torch.Tensor:
        """Path/bytes/array (any rate, channels, PCM type) -> float[S'] mono at 16 kHz, padded to whole units."""
        wave = prepare_audio(raw, sample_rate, self.config.sample_rate)  # (S,)
        spu = self.config.samples_per_unit
        return torch.nn.functional.pad(wave, (0, -wave.numel() % spu))

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """float[S] (whole units) -> log-mel pooled to units, float[U, n_mels]."""
        c = self.config
        n_frames = wave.numel() // c.hop_length
        mel = self._mel(wave)[:, :n_frames]  # (n_mels, F): centred frames, the last one dropped
        logmel = torch.log(mel + LOG_EPS)
        return logmel.view(c.n_mels, -1, c.frames_per_unit).mean(-1).T  # (U, n_mels)

    # ---------------------------------------------------------------- fitting
    def _featurize(self, raw: Any) -> torch.Tensor:
        return self.features(self.prepare(raw))

    def fit(self, data: FitData | Sequence[Any], train: TrainConfig | None = None) -> dict[str, float]:
        """Fit on audio files (``FitData``) or a sequence of 16 kHz mono waves."""
        c, t0 = self.config, time.perf_counter()
        if isinstance(data, FitData):
            keyed = list(fit_inputs.iter_items(data.path, AUDIO_EXTS, self._featurize, data.max_items))
            train_feats, held_feats = fit_inputs.split(keyed, data.held_out, data.seed)
        else:
            train_feats, held_feats = [self.features(self.prepare(w)) for w in data], []
        x = torch.cat(train_feats)  # (N, n_mels)
        log.info("speech: %d files, %.0f s of audio for fitting", len(train_feats), len(x) / c.unit_rate)
        self.mean, self.std = x.mean(0), x.std(0).clamp(min=1e-3)
        x = (x - self.mean) / self.std
        if len(x) > c.max_frames:
            x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(c.seed))[: c.max_frames]]
        self.codebook = kmeans(x, c.codebook_size, c.iters, c.seed, name="speech k-means")
        metrics = {"fit_seconds": time.perf_counter() - t0, "train_seconds_of_audio": len(x) / c.unit_rate}
        return metrics | self._quantisation_stats(torch.cat(held_feats)) if held_feats else metrics

    def _quantisation_stats(self, feats: torch.Tensor) -> dict[str, float]:
        """Correlation of the codebook log-mel with the true log-mel on held-out units (no vocoder)."""
        ids = nearest((feats - self.mean) / self.std, self.codebook)
        quant = self.unit_logmel(ids)
        corr = torch.corrcoef(torch.stack([feats.flatten(), quant.flatten()]))[0, 1]
        used = torch.bincount(ids, minlength=self.vocab_size).gt(0).float().mean()
        return {"held_out_logmel_corr": float(corr), "codebook_usage": float(used)}

    # ---------------------------------------------------------------- interface
    def encode(self, raw: Any, sample_rate: int | None = None) -> torch.Tensor:
        """Audio -> long[U], U = ceil(samples at 16 kHz / samples_per_unit). Empty audio is an error."""
        self._require_fitted()
        feats = self.features(self.prepare(raw, sample_rate))
        return nearest((feats - self.mean) / self.std, self.codebook)

    def unit_logmel(self, ids: torch.Tensor) -> torch.Tensor:
        """long[U] -> float[U, n_mels]: each code's log-mel (un-standardised)."""
        return self.codebook[ids] * self.std + self.mean

    def decode(self, encoded: torch.Tensor, num_samples: int | None = None) -> torch.Tensor:
        """long[U] -> float[U * samples_per_unit] at 16 kHz (trimmed/padded to ``num_samples`` if given)."""
        self._require_fitted()
        ids = torch.as_tensor(encoded).long().flatten()
        if ids.numel() == 0:
            return torch.zeros(num_samples or 0)
        if int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size:
            raise ValueError(f"speech ids must lie in [0, {self.vocab_size})")
        c = self.config
        logmel = self.unit_logmel(ids).T.repeat_interleave(c.frames_per_unit, dim=1)  # (n_mels, F)
        logmel = torch.cat([logmel, logmel[:, -1:]], dim=1)  # (n_mels, F + 1): centred STFT has one more frame
        mel = (logmel.exp() - LOG_EPS).clamp(min=0)
        spec = torch.relu(self._inverse_mel() @ mel)  # (n_fft/2+1, F) power
        length = ids.numel() * c.samples_per_unit
        wave = self._griffin_lim(length)(spec)
        wave = wave / max(1.0, float(wave.abs().max()))
        if num_samples is not None:
            wave = torch.nn.functional.pad(wave, (0, max(0, num_samples - len(wave))))[:num_samples]
        return wave

    def _inverse_mel(self) -> torch.Tensor:
        """float[n_fft/2+1, n_mels]: least-squares inverse of the mel filterbank (the job of
        torchaudio's InverseMelScale, whose default lstsq driver fails on the rank-deficient
        low-frequency filters of a 400-point FFT)."""
        if self._mel_pinv is None:
            self._mel_pinv = torch.linalg.pinv(self._mel.mel_scale.fb.T)  # fb: (n_fft/2+1, n_mels)
        return self._mel_pinv

    def _griffin_lim(self, length: int) -> AT.GriffinLim:
        c = self.config
        return AT.GriffinLim(c.n_fft, c.griffin_lim_iters, hop_length=c.hop_length, power=2.0,
                             length=length, rand_init=False)

    def num_tokens(self, raw: Any, sample_rate: int | None = None) -> int:
        """Units for ``raw``; a float[S] wave at 16 kHz needs no decoding or resampling."""
        if isinstance(raw, torch.Tensor) and raw.ndim == 1 and sample_rate in (None, self.sample_rate):
            if raw.numel() == 0:
                raise ValueError("audio is empty (0 samples); drop the segment or pass at least one sample")
            return math.ceil(raw.numel() / self.config.samples_per_unit)
        return self.prepare(raw, sample_rate).numel() // self.config.samples_per_unit

    def save(self, path: str) -> None:
        self._require_fitted()
        save_tokenizer_file(path, "SpeechUnitTokenizer", self.config,
                            {"codebook": self.codebook, "mean": self.mean, "std": self.std})

    @classmethod
    def load(cls, path: str) -> SpeechUnitTokenizer:
        payload = read_tokenizer_file(path, "SpeechUnitTokenizer")
        out = cls(config_from_payload(SpeechUnitConfig, payload, path))
        state = require_state(payload, ["codebook", "mean", "std"], path)
        out.codebook, out.mean, out.std = state["codebook"].float(), state["mean"].float(), state["std"].float()
        return out
