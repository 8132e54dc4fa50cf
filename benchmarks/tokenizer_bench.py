"""Tokenizer fitting and encoding speeds (CPU), and the image tokenizers of the LM settings compared.

Speeds, printed as a markdown table:

    mot tokenizer demo-data                       # once: data/demo/tokenizers (about 10 s)
    mot tokenizer fit --config configs/tokenizers/vqvae_image.yaml    # optional: learned image tokenizers,
    mot tokenizer fit --config configs/tokenizers/klvae_latent.yaml   # their fit time/metrics are read back
    python benchmarks/tokenizer_bench.py [--data data/demo/tokenizers] [--runs runs/tokenizers] [--threads 2]

Fits the fast tokenizers (BPE, k-means image, speech units) here and times them; for the VQ-VAE
and KL-VAE it reads the fit time and held-out metrics that `mot tokenizer fit` wrote
(`<output>.metrics.json`) and times encoding/decoding of the saved tokenizer.

The image tokenizers that the LM settings train on (k-means in configs/chameleon/*.yaml, the VQ-VAE of
the configs/image_tokenizer/vqvae.yaml overlay), fitted as `mot fit` fits them (on the demo corpus'
training shards, 10% of the images held out by key hash) and measured on the same held-out images:

    python benchmarks/tokenizer_bench.py compare-images --out benchmarks/results/tokenizers_demo.json

writes the JSON and a markdown table beside it (``.md``).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from mot_lightning.logs import configure_logging
from mot_lightning.modality import Modality
from mot_lightning.tokenizers import (
    BPEConfig,
    BPETokenizer,
    ByteTokenizer,
    FitData,
    KMeansImageConfig,
    KMeansImageTokenizer,
    SpeechUnitConfig,
    SpeechUnitTokenizer,
    TrainConfig,
    VQImageTokenizer,
    load_tokenizer,
)
from mot_lightning.tokenizers.image_common import load_images, mean_psnr, to_float
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
    return ("KMeansImageTokenizer (32px, 4x4 patches, 512 codes)",
            f"{t_fit:.1f} s ({metrics['train_images']:.0f} images)",
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
    return ("SpeechUnitTokenizer (25 Hz, 256 units)",
            f"{t_fit:.1f} s ({metrics['train_seconds_of_audio']:.0f} s audio)",
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


# --- the image tokenizers of the LM settings, fitted as `mot fit` fits them -----------------------------
def resolved_data(configs: list[str]) -> dict:
    """The ``data`` section that ``mot fit --config A --config B ...`` resolves (jsonargparse's merge)."""
    from mot_lightning.commands.fit import cli_main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        cli_main(["fit", *[a for c in configs for a in ("--config", c)], "--print_config"])
    return yaml.safe_load(out.getvalue())["data"]



def code_usage(ids: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """long[N, n] codes -> codes used, never used, and the perplexity of their histogram (max: codebook_size)."""
    counts = torch.bincount(ids.flatten(), minlength=codebook_size).double()  # (K,)
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"codes_used": int((counts > 0).sum()), "unused_codes": int((counts == 0).sum()),
            "perplexity": round(float(entropy.exp()), 1)}


def measure_image_tokenizer(tok, images: torch.Tensor, held: torch.Tensor) -> dict:
    """uint8 training / held-out images -> held-out PSNR and code usage, training-image usage (dead codes)."""
    def encode(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([tok.encode_batch(to_float(b)) for b in x.split(256)])

    held_ids, train_ids = encode(held), encode(images)
    recon = torch.cat([tok.decode_batch(b) for b in held_ids.split(256)])
    K = tok.vocab_size
    return {"tokens_per_image": int(held_ids.shape[1]), "codebook_size": K,
            "held_out": {"images": len(held), "psnr_db": round(mean_psnr(recon, to_float(held)), 2),
                         **code_usage(held_ids, K)},
            "training_images": {"images": len(images), **code_usage(train_ids, K)}}


def compare_images(settings: dict[str, list[str]], demo_dir: str | None) -> list[dict]:
    """Fit each setting's image tokenizer on the demo corpus as ``prepare_data`` does; measure it."""
    from mot_lightning.data.datamodule import MultiModalDataModule  # Lightning: imported when used

    rows = []
    for name, configs in settings.items():
        data = resolved_data(configs)
        if demo_dir:
            data["demo"]["dir"] = demo_dir
        dm = MultiModalDataModule.from_data_section(data)
        corpus = dm.demo.corpus(dm.image_size)
        corpus.prepare()
        fit_data = FitData(path=corpus.fit_data())  # the split prepare_data's fit uses (FitData defaults)
        tok = dm.tokenizers[Modality.IMAGE]
        train = dataclasses.replace(dm.tokenizer_files.train or TrainConfig(), run_name=f"compare_{len(rows)}")
        t0 = time.perf_counter()
        fit_metrics = tok.fit(fit_data, train)
        fit_seconds = time.perf_counter() - t0
        images, held = load_images(fit_data, tok.config.resolution)
        row = {"setting": name, "configs": configs, "tokenizer": type(tok).__name__,
               "tokenizer_config": dataclasses.asdict(tok.config), "fit_seconds": round(fit_seconds, 1)}
        if isinstance(tok, VQImageTokenizer):
            row["train"] = {k: v for k, v in dataclasses.asdict(train).items()
                            if k in ("max_steps", "batch_size", "lr", "warmup_steps", "accelerator")}
            row["codes_restarted"] = int(fit_metrics["codes_restarted"])  # dead codes moved during the fit
        rows.append(row | measure_image_tokenizer(tok, images, held))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def image_table(rows: list[dict]) -> str:
    header = ("| setting | tokenizer | tokens / image | codes | fit | held-out PSNR | codes used (held-out) "
              "| perplexity (held-out) | dead codes (training images) |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        held, train = r["held_out"], r["training_images"]
        fit = f"{r['fit_seconds']:.0f} s" + (f" ({r['train']['max_steps']} steps)" if "train" in r else "")
        restarts = f" ({r['codes_restarted']} restarts in the fit)" if "codes_restarted" in r else ""
        lines.append(f"| {r['setting']} | {r['tokenizer']} | {r['tokens_per_image']} | {r['codebook_size']} | {fit} "
                     f"| {held['psnr_db']:.1f} dB | {held['codes_used']} | {held['perplexity']:.0f} "
                     f"| {train['unused_codes']} of {r['codebook_size']}{restarts} |")
    return "\n".join(lines) + "\n"


def run_compare_images(args: argparse.Namespace) -> None:
    settings = {args.base: [args.base]} | {f"+ {o}": [args.base, o] for o in args.overlay}
    start_load = os.getloadavg()[0]
    rows = compare_images(settings, args.demo_dir)
    conditions = {"command": " ".join(["python", *sys.argv]), "torch_threads": torch.get_num_threads(),
                  "cpu_count": os.cpu_count(), "load_average_1min": [round(start_load, 1),
                                                                     round(os.getloadavg()[0], 1)],
                  "torch": torch.__version__}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"conditions": conditions, "rows": rows}, indent=1) + "\n")
    table = image_table(rows)
    out.with_suffix(".md").write_text(
        f"<!-- written by `{conditions['command']}`; {conditions['torch_threads']} torch threads, load average "
        f"{conditions['load_average_1min'][0]} -> {conditions['load_average_1min'][1]} -->\n" + table)
    print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/demo/tokenizers")
    parser.add_argument("--runs", default="runs/tokenizers")
    parser.add_argument("--threads", type=int, default=2)
    sub = parser.add_subparsers(dest="command")
    images = sub.add_parser("compare-images", help="k-means vs overlay image tokenizers of the LM settings")
    images.add_argument("--base", default="configs/chameleon/mot.yaml", help="the setting (k-means codes)")
    images.add_argument("--overlay", nargs="+", default=["configs/image_tokenizer/vqvae.yaml"],
                        help="overlays that swap data.image_tokenizer")
    images.add_argument("--demo-dir", default=None, help="demo corpus dir (default: the config's data.demo.dir)")
    images.add_argument("--out", default="benchmarks/results/tokenizers_demo.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.command == "compare-images":
        configure_logging()  # the fits' progress lines, as under `mot fit`
        run_compare_images(args)
        return
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
