"""Generation metrics of the untying scaling study's largest size: dense against MoT, seed by seed.

    python benchmarks/scaling_generation.py --runs runs/procedural_untying_scaling --size d128 \
        --out benchmarks/results/compare/untying_generation

The losses can hide a generation gain, so at one size of ``configs/sweeps/procedural_untying_scaling.yaml``
every seed's final checkpoint of the dense and the MoT arm of each setting is scored by ``mot eval`` (the
procedural world's scorer: caption -> image faithfulness per attribute on seen and held-out colour/shape pairs,
FID/KID in the scorer's features, image -> caption; in the + speech setting also speech -> text WER/CER and
text -> speech unit accuracy), all with the same prompts and sampling seed. Per metric and setting the table
gives each arm's mean over seeds with a 95% interval (Student-t over seeds, widened to the sampling error the
runs' own sample counts imply: ``mot_lightning/compare/stats.py``), and MoT - dense over seed pairs. A
difference counts when its interval excludes 0; one no larger than 1.96 x the two means' sampling errors is
"within sampling error" (more prompts would be needed to tell), otherwise "within noise".

Writes ``<out>/generation.md`` (the table), ``<out>/generation.json`` (every metric of every run, with n and
SE, and the commands) and each run's ``metrics.json`` / ``samples.png`` under ``<out>/<setting>_<arm>_s<seed>``
(only the seed-0 grids are kept with ``--keep-grids 1``, the default). Each run is scored with the backbone
its own ``config.yaml`` records, so every ``--size`` of the sweep works. The first ``mot eval`` in a fresh
``--cwd`` fits the procedural world's scorer once (about 4.5 minutes on 2 cores) and keeps it beside the
fitted tokenizers (``data.tokenizer_files.dir``) for every later run.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mot_lightning.compare.report import WITHIN_SAMPLING  # noqa: E402
from mot_lightning.compare.runs import GEN_PREFIX, direction  # noqa: E402
from mot_lightning.compare.stats import Z_SAMPLING, Interval, mean_sampling_se  # noqa: E402

ARMS = ("dense", "mot")
# the rows of generation.md (every metric is in generation.json)
SHOWN = ["faithfulness_colour", "faithfulness_shape", "faithfulness_size", "faithfulness_count",
         "faithfulness_position", "heldout/faithfulness_colour", "heldout/faithfulness_shape", "fid",
         "caption_colour", "caption_position", "bleu", "wer", "cer", "tts_unit_acc"]


def checkpoints(runs: Path, setting: str, arm: str, size: str) -> dict[int, Path]:
    """Seed -> final checkpoint of ``<runs>/<setting>/<arm>/<size>/s<seed>-<hash>``."""
    found = {}
    for run in sorted((runs / setting / arm / size).glob("s*-*")):
        ckpt = run / "checkpoints" / "last.ckpt"
        if ckpt.is_file():
            found[int(run.name[1:].split("-")[0])] = ckpt
    return found


def backbone_overlay(ckpt: Path, folder: Path) -> Path:
    """A YAML overlay with the ``model.backbone`` the run trained (its ``config.yaml``): the sweep point's sizes,
    which ``configs/<setting>/<arm>.yaml`` alone does not give (it has the shipped widths)."""
    run = ckpt.parent.parent
    saved = sorted(run.glob("version_*/config.yaml"), key=lambda f: int(f.parent.name.split("_")[1]))
    if not saved:
        raise SystemExit(f"{run} has no version_*/config.yaml (written by `mot fit`): cannot tell its model size")
    backbone = yaml.safe_load(saved[-1].read_text())["model"]["backbone"]
    overlay = folder / ("backbone_" + "_".join(run.parts[-4:]) + ".yaml")  # <setting>_<arm>_<size>_<run>
    overlay.write_text(yaml.safe_dump({"model": {"backbone": backbone}}))
    return overlay


def evaluate(job: tuple, args, overlay: Path) -> dict:
    setting, arm, seed, ckpt = job
    out = args.out / f"{setting}_{arm}_s{seed}"
    cmd = [sys.executable, "-m", "mot_lightning.commands", "eval", "--ckpt", str(ckpt),
           "--config", str(ROOT / f"configs/{setting}/{arm}.yaml"), "--config", str(ROOT / "configs/procedural.yaml"),
           "--config", str(overlay), "--config", str(backbone_overlay(ckpt, overlay.parent)),
           "--out", str(out), "--n", str(args.n), "--n_heldout", str(args.n_heldout),
           "--n_speech", str(args.n_speech if setting == "speech" else 0), "--seed", "0", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=args.cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"mot eval failed for {setting}/{arm} seed {seed}:\n{proc.stdout[-2000:]}"
                         f"{proc.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    if seed >= args.keep_grids:
        (out / "samples.png").unlink(missing_ok=True)
    return {"setting": setting, "arm": arm, "seed": seed, "checkpoint": str(ckpt), "metrics": metrics,
            "command": " ".join(cmd[1:])}


def compare(rows: list[dict], setting: str, metric: str) -> dict | None:
    per_arm = {}
    for arm in ARMS:
        runs = sorted((r for r in rows if r["setting"] == setting and r["arm"] == arm and metric in r["metrics"]),
                      key=lambda r: r["seed"])
        per_arm[arm] = {r["seed"]: r["metrics"][metric] for r in runs}
    seeds = sorted(set(per_arm["dense"]) & set(per_arm["mot"]))
    if not seeds:
        return None
    ses = {arm: mean_sampling_se([per_arm[arm][s].get("se") or 0.0 for s in seeds]) for arm in ARMS}
    arms = {arm: Interval.of([per_arm[arm][s]["value"] for s in seeds], ses[arm]) for arm in ARMS}
    floor = math.sqrt(ses["dense"] ** 2 + ses["mot"] ** 2)
    diff = Interval.of([per_arm["mot"][s]["value"] - per_arm["dense"][s]["value"] for s in seeds], floor)
    if abs(diff.mean) <= Z_SAMPLING * floor:
        verdict = WITHIN_SAMPLING
    elif diff.excludes(0.0):
        better = (diff.mean < 0) == (direction(GEN_PREFIX + metric) == "lower")
        verdict = f"MoT {'better' if better else 'worse'}"
    else:
        verdict = "within noise"
    return {"metric": metric, "seeds": seeds, "n": per_arm["dense"][seeds[0]].get("n"),
            "dense": arms["dense"].text(), "mot": arms["mot"].text(), "mot_minus_dense": diff.text(),
            "sampling_error_of_difference": Z_SAMPLING * floor, "verdict": verdict}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, required=True, help="the sweep's runs/<name> folder")
    p.add_argument("--size", default="d128", help="the sweep point to score")
    p.add_argument("--settings", default="chameleon,speech")
    p.add_argument("--cwd", type=Path, default=Path.cwd(), help="where the sweep ran (its data/ folders)")
    p.add_argument("--val-docs", type=int, default=256, help="the sweep's data.demo.val_docs")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--n-heldout", dest="n_heldout", type=int, default=32)
    p.add_argument("--n-speech", dest="n_speech", type=int, default=16)
    p.add_argument("--keep-grids", dest="keep_grids", type=int, default=1, help="keep samples.png of seeds below")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(setting, arm, seed, ckpt) for setting in args.settings.split(",") for arm in ARMS
            for seed, ckpt in checkpoints(args.runs, setting, arm, args.size).items()]
    if not jobs:
        raise SystemExit(f"no checkpoints under {args.runs}/<setting>/<arm>/{args.size}")
    with tempfile.TemporaryDirectory() as tmp:
        overlay = Path(tmp) / "val_docs.yaml"  # the validation sets the runs used (FID's reference pictures)
        overlay.write_text(f"data:\n  demo:\n    val_docs: {args.val_docs}\n")
        with ThreadPoolExecutor(args.jobs) as pool:
            rows = list(pool.map(lambda job: evaluate(job, args, overlay), jobs))
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    table = {s: [c for m in SHOWN if (c := compare(rows, s, m)) is not None] for s in settings}
    command = "python benchmarks/scaling_generation.py " + " ".join(sys.argv[1:])
    (args.out / "generation.json").write_text(json.dumps({"command": command, "size": args.size, "runs": rows,
                                                          "table": table}, indent=1) + "\n")
    lines = [f"Generation at size {args.size}: dense vs MoT, mean over seeds [95% interval] (`{command}`).", ""]
    for setting in settings:
        lines += [f"## {setting}", "", "| metric | n | dense | MoT | MoT - dense | sampling error of the difference "
                  "(1.96 SE) | verdict |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {c['metric']} | {c['n']} | {c['dense']} | {c['mot']} | {c['mot_minus_dense']} | "
                  f"{c['sampling_error_of_difference']:.3f} | {c['verdict']} |" for c in table[setting]]
        lines.append("")
    (args.out / "generation.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
