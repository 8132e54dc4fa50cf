"""Shared fixtures: demo-world media written as real PNG / WAV / TXT files, and fitted tokenizers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mot_lightning.tokenizers.fitting import FitData
from mot_lightning.world.folders import write_media_folders


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def demo_dirs(tmp_path_factory):
    """60 scene renders (48x48 PNG), 8 spoken captions (16 kHz WAV, 2-4 s each), 40 descriptions."""
    return write_media_folders(tmp_path_factory.mktemp("demo"), images=60, audio=8, texts=40, image_size=48,
                               seed=1)


@pytest.fixture(scope="session")
def kmeans_image(demo_dirs):
    from mot_lightning.tokenizers import KMeansImageConfig, KMeansImageTokenizer

    tok = KMeansImageTokenizer(KMeansImageConfig(resolution=32, patch_size=4, codebook_size=128, iters=10))
    metrics = tok.fit(FitData(str(demo_dirs["images"]), held_out=0.25))
    return tok, metrics


@pytest.fixture(scope="session")
def speech_units(demo_dirs):
    from mot_lightning.tokenizers import SpeechUnitConfig, SpeechUnitTokenizer

    tok = SpeechUnitTokenizer(SpeechUnitConfig(codebook_size=64, iters=15, griffin_lim_iters=16))
    metrics = tok.fit(FitData(str(demo_dirs["audio"]), held_out=0.2))
    return tok, metrics
