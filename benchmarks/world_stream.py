"""Procedural demo stream: the tokens/s its loader delivers vs the tokens/s a training step consumes.

    python benchmarks/world_stream.py [--config configs/speech/mot.yaml] [--batches 300] [--train-steps 80]

1. Loader. Builds the data module of ``--config`` with ``configs/procedural.yaml`` on top (so the
   config's tokenizers, seq_len, batch size and ``loader.num_workers``), runs ``prepare_data`` in a temp
   folder (writes the validation and tokenizer-fit shards, fits the tokenizers) and times the training
   loader after one warm-up batch: virtual-shard generation (scenes, renders, PNG, spoken captions, WAV)
   -> decode -> tokenize -> pack, all in the DataLoader worker processes, as in training.
2. Training. ``mot fit`` of the same two configs for ``--train-steps`` steps on the same prepared folder;
   the median ``train/tokens_per_s`` of its TensorBoard windows after the first: positions a training
   step consumes per second of training work (loader waits excluded, ``callbacks/throughput.py``).
   ``--train-steps 0`` skips it.

Prints one JSON line with both rates and ``ratio`` = loader / training.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from mot_lightning.data.datamodule import MultiModalDataModule

sys.path.insert(0, str(Path(__file__).resolve().parent))  # a sibling script: run as benchmarks/<name>.py
from dataloader import measure  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OVERLAY = ROOT / "configs" / "procedural.yaml"


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if nested else value
    return out


def data_module(configs: list[Path], demo_dir: str, tokenizer_dir: str, batches: int) -> MultiModalDataModule:
    """The ``data:`` sections of ``configs`` merged in order, instantiated as the CLI would."""
    data: dict = {}
    for path in configs:
        data = _merge(data, yaml.safe_load(path.read_text()).get("data") or {})
    data = _merge(data, {"demo": {"dir": demo_dir}, "tokenizer_files": {"dir": tokenizer_dir},
                         "loader": {"train_batches_per_epoch": batches + 1}})
    return MultiModalDataModule.from_data_section(data)


def measure_loader(dm: MultiModalDataModule, batches: int) -> dict:
    """``benchmarks/dataloader.py``'s timing of the training loader, keys named as this script reports them,
    plus the documents packed and skipped."""
    rates = measure(dm, batches)
    return {"startup_s": rates["startup_s"], "batches": batches, "seconds": rates["seconds"],
            "loader_tokens_per_s": rates["tokens_per_s"], "loader_real_tokens_per_s": rates["real_tokens_per_s"],
            "padding_fraction": rates["padding_fraction"],
            "docs_packed": dm.stream_stats()["train"]["docs"], "skipped": dm.skip_counts()}


def measure_training(configs: list[Path], demo_dir: str, tokenizer_dir: str, steps: int, runs: str) -> dict:
    """``mot fit`` for ``steps`` steps; the median ``train/tokens_per_s`` after its first window."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config_args = [a for c in configs for a in ("--config", str(c))]
    cmd = [sys.executable, "-m", "mot_lightning.commands", "fit", *config_args,
           "--data.demo.dir", demo_dir, "--data.tokenizer_files.dir", tokenizer_dir,
           "--trainer.max_steps", str(steps), "--trainer.num_sanity_val_steps", "0",
           "--trainer.limit_val_batches", "0", "--trainer.log_every_n_steps", "10",
           "--throughput.log_every_n_steps", "10", "--trainer.enable_progress_bar", "false",
           "--trainer.logger.init_args.save_dir", runs]
    start = time.perf_counter()
    # the thread settings a user's `mot fit` gets (this script pins its own process to one thread)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    (events,) = {os.path.dirname(p) for p in glob.glob(f"{runs}/**/events.out.tfevents*", recursive=True)}
    acc = EventAccumulator(events, size_guidance={"scalars": 0})
    acc.Reload()
    rates = [e.value for e in acc.Scalars("train/tokens_per_s")][1:]  # the first window holds warm-up
    return {"train_steps": steps, "train_tokens_per_s": round(statistics.median(rates)),
            "train_tokens_per_s_windows": [round(r) for r in rates], "train_wall_s": round(wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs/speech/mot.yaml"))
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--train-steps", type=int, default=80)
    parser.add_argument("--workers", type=int, default=None, help="override data.loader.num_workers")
    args = parser.parse_args()
    torch.set_num_threads(1)
    configs = [Path(args.config), OVERLAY]
    with tempfile.TemporaryDirectory() as tmp:
        demo_dir, tok_dir = os.path.join(tmp, "demo"), os.path.join(tmp, "tokenizers")
        dm = data_module(configs, demo_dir, tok_dir, args.batches)
        if args.workers is not None:
            dm.loader.num_workers = args.workers
        t0 = time.perf_counter()
        dm.prepare_data()  # validation + tokenizer-fit shards, tokenizer fits
        result = {"config": os.path.relpath(args.config, ROOT),
                  "prepare_s": round(time.perf_counter() - t0, 1),
                  "workers": dm.loader.num_workers, "seq_len": dm.seq_len, "batch_size": dm.batch_size,
                  "cpus": os.cpu_count(), "load_average": os.getloadavg()[0]}
        result |= measure_loader(dm, args.batches)
        if args.train_steps > 0:
            runs = os.path.join(tmp, "runs")
            result |= measure_training(configs, demo_dir, tok_dir, args.train_steps, runs)
            result["ratio"] = round(result["loader_tokens_per_s"] / result["train_tokens_per_s"], 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
