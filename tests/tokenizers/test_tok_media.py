"""Bad and unusual inputs: image modes, bit depths, odd sizes; stereo / 44.1 kHz / integer / empty audio."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch
import torchaudio.functional as AF
from PIL import Image

from mot_lightning.tokenizers.media import image_to_tensor, prepare_audio, prepare_image, read_audio


def test_grayscale_rgba_palette_and_16bit_pngs(tmp_path):
    Image.new("L", (20, 10), 128).save(tmp_path / "gray.png")
    rgba = np.zeros((10, 20, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 128  # half-transparent red
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.new("RGB", (20, 10), (0, 0, 255)).convert("P").save(tmp_path / "pal.png")
    Image.fromarray(np.full((10, 20), 65535 // 4, np.uint16)).save(tmp_path / "gray16.png")

    gray = image_to_tensor(tmp_path / "gray.png")
    assert gray.shape == (3, 10, 20) and torch.allclose(gray, torch.full_like(gray, 128 / 255))
    red = image_to_tensor(tmp_path / "rgba.png")[:, 0, 0]  # composited over white
    assert torch.allclose(red, torch.tensor([1.0, 127 / 255, 127 / 255]), atol=0.01)
    assert torch.allclose(image_to_tensor(tmp_path / "pal.png")[:, 0, 0], torch.tensor([0.0, 0.0, 1.0]))
    g16 = image_to_tensor(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")
    assert torch.allclose(g16, torch.full_like(g16, 0.25), atol=1e-3)


def test_array_layouts_agree_and_odd_sizes_are_resized_and_cropped():
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (37, 23, 3), dtype=np.uint8)
    from_numpy = image_to_tensor(hwc)
    assert torch.equal(from_numpy, image_to_tensor(torch.from_numpy(hwc).permute(2, 0, 1)))
    assert torch.equal(from_numpy, image_to_tensor(Image.fromarray(hwc)))
    out = prepare_image(hwc, 32)
    assert out.shape == (3, 32, 32) and 0 <= out.min() and out.max() <= 1
    assert prepare_image(np.zeros((5, 300, 3), np.uint8), 16).shape == (3, 16, 16)  # extreme aspect ratio


def test_bad_images_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        image_to_tensor(torch.full((3, 8, 8), 255.0))
    with pytest.raises(ValueError, match="empty"):
        image_to_tensor(torch.zeros(3, 0, 8))
    with pytest.raises(ValueError, match="1-4 channels"):
        image_to_tensor(torch.zeros(5, 8, 8))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="cannot decode image"):
        image_to_tensor(tmp_path / "broken.png")
    with pytest.raises(TypeError, match="path, bytes, PIL"):
        image_to_tensor(3.0)


def test_stereo_44k_file_becomes_16k_mono(tmp_path):
    t = np.arange(44100) / 44100
    left, right = np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 440 * t)
    soundfile.write(tmp_path / "st.wav", np.stack([left, right], 1).astype(np.float32), 44100, subtype="FLOAT")
    wave = prepare_audio(tmp_path / "st.wav", None, 16000)
    assert wave.ndim == 1 and abs(wave.numel() - 16000) <= 1
    expected = AF.resample(torch.from_numpy(0.75 * np.sin(2 * np.pi * 440 * t)).float(), 44100, 16000)
    assert torch.allclose(wave, expected, atol=1e-4)
    chans, rate = read_audio(tmp_path / "st.wav")
    assert chans.shape == (2, 44100) and rate == 44100
    assert torch.allclose(prepare_audio(chans.T.numpy(), 44100, 16000), wave)  # [S, C] layout


def test_integer_pcm_and_empty_audio():
    pcm = (np.sin(np.linspace(0, 20, 1600)) * 16384).astype(np.int16)
    wave = prepare_audio(pcm, 16000, 16000)
    assert torch.allclose(wave, torch.from_numpy(pcm / 32768).float(), atol=1e-6)
    with pytest.raises(ValueError, match="empty"):
        prepare_audio(np.zeros(0, np.float32), 16000, 16000)
    with pytest.raises(ValueError, match="shape"):
        prepare_audio(np.zeros((2, 3, 4), np.float32), 16000, 16000)
