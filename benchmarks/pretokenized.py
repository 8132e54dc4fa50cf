"""Loader throughput from pre-tokenized shards vs the raw shards they were made from, same tokenizers.

    python benchmarks/pretokenized.py [--demo-dir DIR] [--workers 2] [--batches 100] [--vq-steps 30]

Two settings on the demo corpus (generated into a temporary folder unless --demo-dir holds one):

- ``vqvae``: the Chameleon setting (``configs/chameleon/mot.yaml``: text + images) with the CPU VQ-VAE
  image tokenizer of ``configs/tokenizers/vqvae_image.yaml`` (32x32 -> 64 codes), fitted for
  ``--vq-steps`` steps with ``mot tokenizer fit`` (its weights do not change the cost of a forward);
- ``kmeans``: the speech setting (``configs/speech/mot.yaml``: k-means image patches + speech units).

For each: ``mot data tokenize`` writes the training sources once (timed), then the training loader of
``MultiModalDataModule`` (``--workers`` processes, torch at one thread each, as on a 2-core machine) is
timed over ``--batches`` batches after a warm-up batch, reading the raw shards and the pre-tokenized
ones: wall-clock tokens/s, and tokens per CPU second of the main process and its workers (steady when
other jobs share the cores; ``load_average`` says how busy the machine was). Prints one JSON line per
setting and writes ``benchmarks/results/pretokenized_<setting>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from mot_lightning.data.demo import DemoConfig
from mot_lightning.data.tokenize_shards import parse, tokenize_split

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def fit_vqvae(name: str, demo_dir: str, work: str, steps: int) -> tuple[str, dict, float]:
    """``mot tokenizer fit`` of a shipped VQ-VAE config for a few steps on CPU -> (file, its tokenizer YAML,
    seconds). The weights barely train; a forward costs what a trained one's costs."""
    config = ROOT / "configs" / "tokenizers" / f"{name}.yaml"
    out = os.path.join(work, f"{name}.pt")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mot_lightning.commands", "tokenizer", "fit", "--config", str(config),
                    "--data.path", os.path.join(demo_dir, "train"), "--data.max_items", "256",
                    "--train.max_steps", str(steps), "--train.batch_size", "8", "--train.accelerator", "cpu",
                    "--train.precision", "32-true", "--train.num_workers", "0",
                    "--train.val_every_n_steps", "100000", "--train.progress_bar", "false",
                    "--train.log_dir", os.path.join(work, "logs"), "--output", out], check=True)
    with open(config) as fh:
        tokenizer = yaml.safe_load(fh)["tokenizer"]
    return out, tokenizer, time.perf_counter() - start


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the loader's worker processes)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measure(dm, batches: int) -> dict:
    """Tokens/s of the training loader after one warm-up batch (worker start-up, shuffle buffer), and
    tokens per CPU second over the whole epoch (workers included: steady when other jobs share the cores)."""
    dm.setup("fit")
    cpu = _cpu_seconds()
    loader = iter(dm.train_dataloader())
    first = next(loader)
    positions = real = 0
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(loader)
        positions += batch.tokens.numel()
        real += int((batch.tokens != dm.vocab.pad_id).sum())
    seconds = time.perf_counter() - start
    for _ in loader:  # the epoch ends: the workers exit and their CPU time is counted
        pass
    cpu = _cpu_seconds() - cpu
    total = positions + first.tokens.numel()
    return {"seconds": round(seconds, 2), "tokens_per_s": round(positions / seconds),
            "real_tokens_per_s": round(real / seconds), "padding_fraction": round(1 - real / positions, 3),
            "cpu_seconds": round(cpu, 2), "tokens_per_cpu_s": round(total / cpu)}


def run_setting(name: str, base: list[str], work: str, args, batches: int) -> dict:
    loader = ["--data.loader.num_workers", str(args.workers),
              "--data.loader.train_batches_per_epoch", str(batches + 1)]
    out = os.path.join(work, f"pretokenized_{name}")
    dm, _ = parse([*base, *loader, "--out", out])
    start = time.perf_counter()
    manifest = tokenize_split(dm, out, "train", workers=args.workers)
    tokenize_s = time.perf_counter() - start
    raw = measure(parse([*base, *loader, "--out", out])[0], batches)
    sources = [info["config"] for info in manifest["sources"].values()]
    files = ["--data.tokenizer_files.files", json.dumps(manifest["tokenizer_files"])]  # as `mot data tokenize` says
    pre_dm, _ = parse([*base, *loader, "--data.sources", json.dumps(sources), *files, "--out", out])
    pre = measure(pre_dm, batches)
    return {"setting": name, "workers": args.workers, "batches": batches, "cpus": os.cpu_count(),
            "raw": raw, "pretokenized": pre, "speedup": round(pre["tokens_per_s"] / raw["tokens_per_s"], 1),
            "speedup_cpu": round(pre["tokens_per_cpu_s"] / raw["tokens_per_cpu_s"], 1),
            "load_average": round(os.getloadavg()[0], 1),
            "tokenize_once_s": round(tokenize_s, 1),
            "docs": sum(s["docs"] for s in manifest["sources"].values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-dir", default=None, help="an existing demo corpus (default: generate one)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--vq-steps", type=int, default=30)
    parser.add_argument("--settings", default="vqvae,kmeans")
    args = parser.parse_args()
    torch.set_num_threads(1)
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        demo_dir = args.demo_dir or os.path.join(work, "demo")
        DemoConfig(out=demo_dir).prepare()  # kept when it holds this corpus, else (re)written
        common = ["--data.tokenizer_files.dir", os.path.join(work, "tokenizers")]
        for name in args.settings.split(","):
            if name == "kmeans":
                base, fit_s = ["--config", str(ROOT / "configs" / "speech" / "mot.yaml")], None
            else:
                vq_file, vq_yaml, fit_s = fit_vqvae("vqvae_image", demo_dir, work, args.vq_steps)
                base = ["--config", str(ROOT / "configs" / "chameleon" / "mot.yaml"),
                        "--data.image_tokenizer", json.dumps(vq_yaml),
                        "--data.tokenizer_files.files", json.dumps({"image": vq_file})]
            result = run_setting(name, [*base, *common, "--data.demo.dir", demo_dir], work, args, args.batches)
            result["tokenizer_fit_s"] = None if fit_s is None else round(fit_s, 1)
            print(json.dumps(result), flush=True)
            (RESULTS / f"pretokenized_{name}.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
