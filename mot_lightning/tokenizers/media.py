"""Raw media in, canonical tensors out: any image -> float[3, H, W] in [0, 1]; any audio -> mono float[S].

Conversions (docs/contracts.md, "Shards": images of any size and mode, audio of any rate/channels):
- image modes (``to_rgb``, shared with training's decoder): grayscale (L, 1, I;16, I, F) is repeated to RGB,
  16-bit is scaled by 65535, alpha (RGBA, LA, PA) is composited over white, palette/CMYK/YCbCr are converted
  to RGB, all as 8-bit RGB;
- layouts: numpy arrays are HWC/HW (as PIL and imageio give them), torch tensors are CHW/HW;
- audio: channels are averaged, integer PCM is scaled to [-1, 1], any rate is resampled
  with ``torchaudio.functional.resample``; bytes are read and written with ``soundfile`` only.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
import torchaudio.functional as AF
import torchvision.transforms.v2.functional as TF
from PIL import Image

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
AUDIO_EXTS = (".wav", ".flac", ".ogg")
TEXT_EXTS = (".txt",)

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


# ----------------------------------------------------------------------------- images
def read_image(source: str | os.PathLike | bytes) -> torch.Tensor:
    """Decode an image file (or its bytes) with PIL -> float[3, H, W] in [0, 1]."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            img.load()
            return pil_to_tensor(img)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        name = "<bytes>" if isinstance(source, bytes) else str(source)
        raise ValueError(f"cannot decode image {name}: {err}; remove or re-encode the file") from err


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL image of any mode -> float[3, H, W] in [0, 1] (modes converted by ``to_rgb``)."""
    arr = np.asarray(to_rgb(img), dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(arr.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


def to_rgb(img: Image.Image) -> Image.Image:
    """PIL image of any mode -> 8-bit RGB, the one mode conversion of the app (training's ``load_image``, the
    tokenizer fits, ``mot data inspect`` and evaluation all decode through it): 16-bit and 32-bit integer
    greyscale scaled by 65535 (PIL's ``convert`` clips them, turning most of a 16-bit image white), float
    greyscale clipped to [0, 1], alpha (RGBA, LA, PA, palette transparency) composited over white (``convert``
    drops it, turning transparent pixels black), palette/CMYK/YCbCr/... converted by PIL."""
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT_MODES or img.mode == "F":
        scale = 1.0 if img.mode == "F" else 65535.0
        arr = np.asarray(img, dtype=np.float32) / scale  # (H, W)
        return Image.fromarray(np.rint(arr.clip(0.0, 1.0) * 255.0).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, HSV, LAB, RGBX ...


def image_to_tensor(raw: Any) -> torch.Tensor:
    """Path, bytes, PIL image, numpy HWC/HW or torch CHW/HW array -> float[3, H, W] in [0, 1]."""
    if isinstance(raw, (str, os.PathLike, bytes)):
        return read_image(raw)
    if isinstance(raw, Image.Image):
        return pil_to_tensor(raw)
    if isinstance(raw, np.ndarray):
        t = torch.from_numpy(raw.astype(np.float32) / _int_scale(raw.dtype) if raw.dtype.kind in "ui"
                             else raw.astype(np.float32))
        t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)  # HWC -> CHW
        return _channels_to_rgb(_check_unit_range(t))
    if isinstance(raw, torch.Tensor):
        t = raw.detach().cpu()
        if not torch.is_floating_point(t):
            t = t.numpy().astype(np.float32) / _int_scale(t.numpy().dtype)
            t = torch.from_numpy(t)
        t = t.float()
        t = t[None] if t.ndim == 2 else t
        return _channels_to_rgb(_check_unit_range(t))
    raise TypeError(
        f"cannot read an image from {type(raw).__name__}; pass a path, bytes, PIL.Image, "
        f"numpy HWC array or torch CHW tensor"
    )


def _int_scale(dtype: np.dtype) -> float:
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    raise TypeError(f"unsupported integer image dtype {dtype}; use uint8, uint16 or float in [0, 1]")


def _check_unit_range(t: torch.Tensor) -> torch.Tensor:
    if t.ndim != 3 or t.shape[0] not in (1, 2, 3, 4):
        raise ValueError(
            f"image must be HW/CHW with 1-4 channels (numpy: HWC), got shape {tuple(t.shape)}"
        )
    if t.shape[1] == 0 or t.shape[2] == 0:
        raise ValueError(f"image is empty (shape {tuple(t.shape)}); drop it from the data")
    lo, hi = float(t.min()), float(t.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(
            f"float image values must lie in [0, 1], got [{lo:.3g}, {hi:.3g}]; "
            f"divide uint8 data by 255 (or pass the uint8 array itself)"
        )
    return t.clamp(0.0, 1.0)


def _channels_to_rgb(t: torch.Tensor) -> torch.Tensor:
    return _gray_alpha_to_rgb(t) if t.shape[0] <= 2 else _rgb_alpha_to_rgb(t)


def _gray_alpha_to_rgb(t: torch.Tensor) -> torch.Tensor:  # (1|2, H, W) -> (3, H, W)
    gray = t[:1] if t.shape[0] == 1 else _over_white(t[:1], t[1:2])
    return gray.expand(3, -1, -1).contiguous()


def _rgb_alpha_to_rgb(t: torch.Tensor) -> torch.Tensor:  # (3|4, H, W) -> (3, H, W)
    return t.contiguous() if t.shape[0] == 3 else _over_white(t[:3], t[3:4])


def _over_white(color: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    return color * alpha + (1.0 - alpha)


def prepare_image(raw: Any, resolution: int) -> torch.Tensor:
    """Any image -> float[3, R, R]: shorter side resized to R (antialiased), then centre-cropped."""
    img = image_to_tensor(raw)  # (3, H, W)
    if img.shape[1:] != (resolution, resolution):
        img = TF.resize(img, [resolution], antialias=True)
        img = TF.center_crop(img, [resolution, resolution])
    return img.clamp(0.0, 1.0)


def save_image(path: str | os.PathLike, img: torch.Tensor) -> None:
    """float[3, H, W] in [0, 1] -> 8-bit PNG/JPEG (by extension)."""
    arr = (img.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


# ----------------------------------------------------------------------------- audio
def read_audio(source: str | os.PathLike | bytes) -> tuple[torch.Tensor, int]:
    """Decode audio with soundfile -> (float[C, S] in [-1, 1], sample_rate)."""
    try:
        data, rate = soundfile.read(io.BytesIO(source) if isinstance(source, bytes) else source,
                                    dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as err:
        name = "<bytes>" if isinstance(source, bytes) else str(source)
        raise ValueError(f"cannot decode audio {name}: {err}; use WAV/FLAC/OGG files") from err
    if not np.isfinite(data).all():  # a float WAV may hold NaN/inf: skipped (training counts it as bad_audio)
        name = "<bytes>" if isinstance(source, bytes) else str(source)
        raise ValueError(f"audio {name} has non-finite samples (NaN/inf); re-encode or drop it")
    return torch.from_numpy(np.ascontiguousarray(data.T)), int(rate)  # (C, S)


def write_audio(path: str | os.PathLike, wave: torch.Tensor, sample_rate: int) -> None:
    """float[S] (or [C, S]) in [-1, 1] -> 16-bit PCM file (format from the extension)."""
    arr = wave.detach().cpu().float().clamp(-1, 1).numpy()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, arr.T if arr.ndim == 2 else arr, sample_rate, subtype="PCM_16")


def prepare_audio(raw: Any, sample_rate: int | None, target_rate: int) -> torch.Tensor:
    """Path/bytes/array of any layout, rate and PCM type -> mono float[S] at ``target_rate``.

    ``sample_rate`` is the rate of an array input (``None`` means it is already ``target_rate``);
    files carry their own rate. 2-D arrays are [C, S], or [S, C] when the second dim is small
    (soundfile's layout).
    """
    if isinstance(raw, (str, os.PathLike, bytes)):
        raw, sample_rate = read_audio(raw)
    wave = _to_float_wave(raw)
    wave = _to_mono(wave)
    if wave.numel() == 0:
        raise ValueError("audio is empty (0 samples); drop the segment or pass at least one sample")
    rate = target_rate if sample_rate is None else int(sample_rate)
    if rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if rate != target_rate:
        wave = AF.resample(wave, rate, target_rate)
    return wave.clamp(-1.0, 1.0).contiguous()


def _to_float_wave(raw: Any) -> torch.Tensor:
    if isinstance(raw, torch.Tensor):
        raw = raw.detach().cpu().numpy()
    if not isinstance(raw, np.ndarray):
        raise TypeError(f"cannot read audio from {type(raw).__name__}; pass a path, bytes, numpy or torch array")
    if raw.dtype.kind in "ui":
        scale = float(np.iinfo(raw.dtype).max) + 1.0
        offset = scale / 2 if raw.dtype.kind == "u" else 0.0  # unsigned PCM (8-bit WAV) is offset
        return torch.from_numpy((raw.astype(np.float32) - offset) / (scale / 2 if offset else scale))
    return torch.from_numpy(raw.astype(np.float32))


def _to_mono(wave: torch.Tensor) -> torch.Tensor:
    if wave.ndim == 1:
        return wave
    if wave.ndim != 2:
        raise ValueError(f"audio must be [S], [C, S] or [S, C], got shape {tuple(wave.shape)}")
    if wave.shape[1] <= 8 and wave.shape[0] > wave.shape[1]:
        wave = wave.T  # (S, C) -> (C, S)
    return wave.mean(dim=0)
