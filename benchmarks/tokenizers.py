"""Tokenizer fitting and encoding speeds (CPU), printed as a markdown table.

    mot tokenizer demo-data                       # once: data/demo/tokenizers (about 10 s)
    mot tokenizer fit --config configs/tokenizers/vqvae_image.yaml    # optional: learned image tokenizers,
    mot tokenizer fit --config configs/tokenizers/klvae_latent.yaml   # their fit time/metrics are read back
    python benchmarks/tokenizers.py [--data data/demo/tokenizers] [--runs runs/tokenizers] [--threads 2]

Fits the fast tokenizers (BPE, k-means image, speech units) here and times them; for the VQ-VAE
and KL-VAE it reads the fit time and held-out metrics that `mot tokenizer fit` wrote
(`<output>.metrics.json`) and times encoding/decoding of the saved tokenizer.
"""
from __future__ import annotations

import sys
from pathlib import Path

# This file is named like HF's `tokenizers` package: drop its folder from the import path first.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import json
import time
from collections.abc import Callable

import torch

from mot_lightning.tokenizers import (
    BPEConfig,
    BPETokenizer,
    ByteTokenizer,
    FitData,
    KMeansImageConfig,
    KMeansImageTokenizer,
    SpeechUnitConfig,
    SpeechUnitTokenizer,
    load_tokenizer,
)
from mot_lightning.tokenizers.media import prepare_audio, prepare_image


def timed(fn: Callable[[], object], repeat: int = 3) -> float:
    """Best-of-``repeat`` wall seconds (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_text(data: Path) -> list[tuple[str, str, str, str]]:
    texts = [p.read_text(encoding="utf-8") for p in sorted((data / "text").glob("*.txt"))]
    n_bytes = sum(len(t.encode()) for t in texts)
    byte_tok = ByteTokenizer()
    t_byte = timed(lambda: [byte_tok.encode(t) for t in texts])
    bpe = BPETokenizer(BPEConfig(vocab_size=4096))
    t0 = time.perf_counter()
    bpe.fit(texts)
    t_fit = time.perf_counter() - t0
    t_one = timed(lambda: [bpe.encode(t) for t in texts])
    t_batch = timed(lambda: bpe.encode_batch(texts))
    n_tok = sum(bpe.num_tokens(t) for t in texts)
    return [
        ("ByteTokenizer", "-", f"{n_bytes / t_byte / 1e6:.1f} MB/s", "exact"),
        ("BPETokenizer (4096)", f"{t_fit:.2f} s ({len(texts)} docs, {n_bytes / 1e3:.0f} kB)",
         f"{n_bytes / t_one / 1e6:.2f} MB/s one-by-one, {n_bytes / t_batch / 1e6:.2f} MB/s batched",
         f"exact; {n_bytes / n_tok:.2f} bytes/token"),
    ]


def bench_kmeans_image(data: Path) -> tuple[str, str, str, str]:
    tok = KMeansImageTokenizer(KMeansImageConfig(resolution=32, patch_size=4, codebook_size=512))
    t0 = time.perf_counter()
    metrics = tok.fit(FitData(str(data / "images"), held_out=0.1))
    t_fit = time.perf_counter() - t0
    imgs = torch.stack([prepare_image(p, 32) for p in sorted((data / "images").glob("*.png"))[:256]])
    t_enc = timed(lambda: tok.encode_batch(imgs))
    return ("KMeansImageTokenizer (32px, 4x4 patches, 512 codes)", f"{t_fit:.1f} s ({metrics['train_images']:.0f} images)",
            f"{len(imgs) / t_enc:.0f} images/s (batch 256)",
            f"held-out PSNR {metrics['psnr']:.1f} dB, usage {metrics['codebook_usage']:.0%}")


def bench_speech(data: Path) -> tuple[str, str, str, str]:
    tok = SpeechUnitTokenizer(SpeechUnitConfig(codebook_size=256))
    t0 = time.perf_counter()
    metrics = tok.fit(FitData(str(data / "audio"), held_out=0.1))
    t_fit = time.perf_counter() - t0
    waves = [prepare_audio(p, None, 16000) for p in sorted((data / "audio").glob("*.wav"))[:10]]
    seconds = sum(w.numel() for w in waves) / 16000
    t_enc = timed(lambda: [tok.encode(w) for w in waves])
    ids = tok.encode(waves[0])
    t_dec = timed(lambda: tok.decode(ids), repeat=1)
    return ("SpeechUnitTokenizer (25 Hz, 256 units)", f"{t_fit:.1f} s ({metrics['train_seconds_of_audio']:.0f} s audio)",
            (f"encode {seconds / t_enc:.0f}x real time; decode (Griffin-Lim 32 it.) "
             f"{waves[0].numel() / 16000 / t_dec:.1f}x real time"),
            f"held-out unit log-mel corr {metrics['held_out_logmel_corr']:.3f}, usage {metrics['codebook_usage']:.0%}")


def bench_learned(data: Path, path: Path, label: str) -> tuple[str, str, str, str] | None:
    if not path.is_file():
        print(f"skipping {label}: no {path} (fit it with `mot tokenizer fit`)")
        return None
    tok = load_tokenizer(path)
    metrics = json.loads(path.with_suffix(".metrics.json").read_text())
    res = tok.config.resolution
    imgs = torch.stack([prepare_image(p, res) for p in sorted((data / "images").glob("*.png"))[:256]])
    t_enc = timed(lambda: tok.encode_batch(imgs))
    enc = tok.encode_batch(imgs)
    t_dec = timed(lambda: tok.decode_batch(enc))
    quality = f"held-out PSNR {metrics['psnr']:.1f} dB"
    if "codebook_usage" in metrics:
        quality += f", codebook usage {metrics['codebook_usage']:.0%} ({metrics['codes_restarted']:.0f} restarts)"
    if "latent_roundtrip_rel_error" in metrics:
        quality += f", latent round-trip rel. error {metrics['latent_roundtrip_rel_error']:.3f}"
    return (label, f"{metrics['wall_seconds']:.0f} s (`mot tokenizer fit`)",
            f"encode {len(imgs) / t_enc:.0f} images/s, decode {len(imgs) / t_dec:.0f} images/s (batch 256)", quality)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/demo/tokenizers")
    parser.add_argument("--runs", default="runs/tokenizers")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data, runs = Path(args.data), Path(args.runs)
    if not (data / "images").is_dir():
        raise SystemExit(f"no demo data at {data}: run `mot tokenizer demo-data --out {data}` first")
    rows = [*bench_text(data), bench_kmeans_image(data), bench_speech(data),
            bench_learned(data, runs / "vqvae_image.pt", "VQImageTokenizer (VQ-VAE, 32px, 64 tokens, 256 codes)"),
            bench_learned(data, runs / "klvae_latent.pt", "LatentImageTokenizer (KL-VAE, 32px, 16 x 16-dim)")]
    print(f"\n| tokenizer | fit | encode / decode speed ({args.threads} CPU threads) | quality |")
    print("|---|---|---|---|")
    for row in filter(None, rows):
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
