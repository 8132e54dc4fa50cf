"""Training step cost per model size on CPU, eager against the other settings a CPU run can choose.

    python benchmarks/cpu_step_settings.py --out benchmarks/results/cpu_step_settings.json

Each case is a real ``mot fit`` of the + speech MoT setting on the procedural demo world (the untying scaling
study's runs: ``configs/speech/mot.yaml`` + ``configs/procedural.yaml``) at one of the study's sizes, for
``--steps`` optimizer steps with no validation and no sample callbacks. Two cases run at once, each with one
intra-op thread, as ``mot sweep --jobs 2`` runs the study on 2 cores, and the two settings of one size run
side by side so load hits both alike. Reported per case:

- ``step_s`` and ``tokens_per_s``: the median over the logged windows of ``train/tokens_per_s`` (the
  ``ThroughputMonitor`` clock: wall time between optimizer steps, data loading included), after the first
  ``--skip`` windows (compile and warm-up);
- ``cpu_s``: CPU seconds of the whole process and its data workers (start-up and compile included), the
  cost a study pays per run.

Settings: ``eager``; ``compile`` (``model.compile: true``: each block through Inductor); ``workers0``
(``data.loader.num_workers: 0``: documents generated in the training process, no worker).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"d64": (64, 2), "d96": (96, 3), "d128": (128, 4)}  # configs/sweeps/procedural_untying_scaling.yaml
SETTINGS = {"eager": [], "compile": ["--model.compile", "true"], "workers0": ["--data.loader.num_workers", "0"]}


def run_case(size: str, setting: str, steps: int, data_dir: Path, out: Path, skip: int) -> dict:
    dim, layers = SIZES[size]
    save = out / f"{size}_{setting}"
    cmd = [sys.executable, "-m", "mot_lightning.commands", "fit",
           "--config", str(ROOT / "configs/speech/mot.yaml"), "--config", str(ROOT / "configs/procedural.yaml"),
           "--model.backbone.dim", str(dim), "--model.backbone.n_layers", str(layers),
           "--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "0", "--trainer.callbacks", "[]",
           "--trainer.enable_progress_bar", "false", "--throughput.log_every_n_steps", "5",
           "--data.demo.dir", str(data_dir / "demo"), "--data.tokenizer_files.dir", str(data_dir / "tokenizers"),
           "--trainer.logger.init_args.save_dir", str(save), *SETTINGS[setting]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # CPU time of this child and its data workers: run it under a wrapper that reports its own children's usage
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "u = resource.getrusage(resource.RUSAGE_CHILDREN); print('CPU_S', u.ru_utime + u.ru_stime); "
               "sys.exit(r.returncode)")
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], env=env, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{size}/{setting} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    cpu_s = float(proc.stdout.rsplit("CPU_S", 1)[1].split()[0])
    return {"size": size, "setting": setting, "steps": steps, "cpu_s": round(cpu_s, 1), **window_rates(save, skip)}


def window_rates(save: Path, skip: int) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rates = []
    for events in sorted(save.rglob("events.out.tfevents.*")):  # the run's scalars, and its hparams file
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if "train/tokens_per_s" in acc.Tags()["scalars"]:
            rates += [e.value for e in acc.Scalars("train/tokens_per_s")]
    rates = rates[skip:]
    if not rates:
        return {}
    tokens_per_step = 8 * 256  # data.batch_size x data.seq_len of the setting
    median = statistics.median(rates)
    return {"tokens_per_s": round(median, 1), "step_s": round(tokens_per_step / median, 4), "windows": len(rates)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--skip", type=int, default=2, help="logged windows left out at the start (5 steps each)")
    p.add_argument("--sizes", default=",".join(SIZES))
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--data-dir", type=Path, default=None, help="demo + tokenizer folders (default: a temp dir)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/cpu_step_settings.json")
    args = p.parse_args()
    sizes, settings = args.sizes.split(","), args.settings.split(",")
    unknown = [k for k in settings if k not in SETTINGS]
    if unknown or "eager" not in settings:
        p.error(f"--settings: {', '.join(unknown) or 'eager missing'}; choose from {', '.join(SETTINGS)}, with "
                "eager (every other setting's speed is given against it)")
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or Path(tmp) / "data"
        # the first run writes the procedural validation shards and fits the tokenizers, once, before the others
        run_case(sizes[0], "eager", 2, data_dir, Path(tmp) / "warm", args.skip)
        cases = [(s, k) for s in sizes for k in settings]
        with ThreadPoolExecutor(2) as pool:
            rows = list(pool.map(lambda c: run_case(*c, args.steps, data_dir, Path(tmp) / "runs", args.skip), cases))
    for row in rows:
        eager = next(r for r in rows if r["size"] == row["size"] and r["setting"] == "eager")
        row["speed_vs_eager"] = round(row["tokens_per_s"] / eager["tokens_per_s"], 3)
        print(f"{row['size']:>5} {row['setting']:>9}: {row['step_s']:.3f} s/step, {row['tokens_per_s']:.0f} "
              f"tokens/s ({row['speed_vs_eager']:.2f}x eager), {row['cpu_s']:.0f} CPU s for {row['steps']} steps")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": "python benchmarks/cpu_step_settings.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "lanes": 2, "threads_per_run": 1, "rows": rows,
        "peak_rss_children_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }, indent=1) + "\n")


if __name__ == "__main__":
    main()
