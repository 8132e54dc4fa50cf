"""``mot eval``: score a trained checkpoint's generations; writes ``metrics.json`` and ``samples.png``.

    mot eval --ckpt runs/speech/mot/<run>/checkpoints/last.ckpt --config configs/speech/mot.yaml --out eval/
        [--n 64] [--n_heldout 32] [--n_speech 32] [--seed 0] [--temperature 1.0] [--top_k K]
        [--guidance 3.0] [--sampler ddim|ddpm|flow] [--steps 50] [--ema] [--device cpu]
        [--world auto|procedural] [--scorer_dir DIR] [--inception_weights FILE]
        [--metrics metrics.yaml] [--clip_model DIR]
    mot eval --export DIR --out eval/ [...]     (a folder written by `mot export`: carries its config)

The model and data module are built from the training YAML as for ``mot generate`` (further ``--key
value`` arguments go to that config). ``metrics.json`` holds every metric (``eval/evaluate.py`` names
them) with its sample count, sampling error (``se``) and description, the floors and ceilings that bound
them, the sampling settings and seed, the checkpoint and step, and notes on what was not measured. ``samples.png`` shows
the caption->image samples with their prompts and what the scorer found wrong.

On data other than the demo world, images are scored as the training config's ``GenerationMetrics``
callback says (its ``metrics`` group, ``eval/data_metrics.py``: FID / KID features by class_path and local
weights, a CLIP folder, a label rule and classifier), or as ``--metrics FILE`` says (YAML, the same
mapping; it replaces the config's); ``--clip_model DIR`` alone sets the CLIP folder.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from mot_lightning.checkpoints.weights import add_weights_arguments
from mot_lightning.sampling import GenerationTasks, add_sampling_arguments, generable_modalities, sampling_from_args

METRICS_FILE, GRID_FILE = "metrics.json", "samples.png"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mot eval", description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                epilog="any other --key value is passed to the training config (LightningCLI)")
    add_weights_arguments(p)
    p.add_argument("--out", required=True, help=f"directory for {METRICS_FILE} and {GRID_FILE}")
    p.add_argument("--n", type=int, default=64, help="caption->image prompts (seen split; also the FID/KID set "
                   "size and the image->caption images)")
    p.add_argument("--n_heldout", type=int, default=32, help="prompts showing held-out colour/shape pairs")
    p.add_argument("--n_speech", type=int, default=32, help="validation clips for speech->text, text->speech")
    add_sampling_arguments(p)
    p.add_argument("--ema", action="store_true", help="score the EMA averages of the weights (the run's EMA "
                   "callback saved them; or an export written with `mot export --ema`)")
    p.add_argument("--world", default="auto", help="demo world of the prompts: auto (the demo world when the "
                   "config reads the demo corpus, in either data.demo.mode) or procedural (the demo world)")
    p.add_argument("--scorer_dir", default=None, help="where the fit-once scorer lives (default: "
                   "data.tokenizer_files.dir); fitted there once when missing")
    p.add_argument("--scorer_file", default=None, help="a scorer file to load as it is (instead of the fit-once one)")
    p.add_argument("--inception_weights", default=None, help="local Inception-v3 FID weights (never downloaded)")
    p.add_argument("--metrics", default=None, help="YAML file: how images are scored on data other than the demo "
                   "worlds (keys features, clip_model, labels; docs/own_data.md)")
    p.add_argument("--clip_model", default=None, help="CLIPScore with the CLIP model in this local folder")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def run(args: argparse.Namespace, overrides: list[str]) -> dict:
    from mot_lightning.building import build_cli
    from mot_lightning.checkpoints.weights import weights_source
    from mot_lightning.eval.evaluate import ScorerSource, build_suite, evaluate
    from mot_lightning.eval.grid import save_grid

    settings = sampling_from_args(args)  # checked first, with the weights source
    data_metrics = read_data_metrics(args.metrics, args.clip_model)
    source = weights_source(args.ckpt, args.export, args.config, overrides, ema=args.ema)
    cli = build_cli(source.configs, source.overrides, source.checkpoint)
    model, dm = cli.model, cli.datamodule
    if data_metrics is None:  # the training config's GenerationMetrics says how its images are scored
        data_metrics = next((cb.data_metrics for cb in cli.trainer.callbacks if hasattr(cb, "data_metrics")), None)
    step = source.load_into(model, args.device)
    modalities = generable_modalities(model, dm)
    suite = build_suite(dm, modalities, args.device, args.n, args.n_heldout, args.n_speech, args.world,
                        ScorerSource(args.scorer_file, args.scorer_dir), args.inception_weights, settings.seed,
                        data_metrics)
    result = evaluate(GenerationTasks.of(model, dm, settings), suite, modalities)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "checkpoint": str(source.path), "global_step": step, "weights": source.kind,
        "sampling": dataclasses.asdict(settings),
        "modalities": sorted(m.label for m in modalities),
        "world": None if suite.world is None else suite.world.name,
        "metrics": {k: {"value": m.value, "n": m.n, "se": m.se, "description": m.description}
                    for k, m in result.metrics.items()},
        "bounds": suite.bounds, "notes": result.notes,
    }
    (out / METRICS_FILE).write_text(json.dumps(report, indent=1) + "\n")
    if result.samples:
        save_grid(result.samples, out / GRID_FILE)
    return report


def read_data_metrics(path: str | None, clip_model: str | None):
    """``DataMetrics`` from ``--metrics FILE`` (a mapping, or one under a ``metrics`` key) and ``--clip_model``;
    None when neither is given."""
    import yaml

    from mot_lightning.eval.data_metrics import DataMetrics

    if path is None and clip_model is None:
        return None
    data: dict = {}
    if path is not None:
        if not Path(path).is_file():
            raise SystemExit(f"mot eval: --metrics {path}: no such file")
        data = yaml.safe_load(Path(path).read_text()) or {}
        if isinstance(data, dict) and set(data) == {"metrics"}:
            data = data["metrics"]
    if clip_model is not None:
        data = {**data, "clip_model": clip_model}
    try:
        return DataMetrics.from_dict(data, where=f"--metrics {path}" if path else "metrics")
    except (TypeError, ValueError) as err:
        raise SystemExit(f"mot eval: {err}") from err


def main(argv: list[str] | None = None) -> None:
    args, overrides = _parser().parse_known_args(argv)
    if args.n < 2 or args.n_heldout < 0 or args.n_speech < 0:
        raise SystemExit("mot eval: --n must be >= 2 (FID needs two images), --n_heldout and --n_speech >= 0")
    report = run(args, overrides)
    for name, metric in report["metrics"].items():
        se = "" if metric["se"] is None else f" +- {metric['se']:.4f}"
        print(f"{name:32s} {metric['value']:.4f}{se}  (n={metric['n']})")
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"wrote {Path(args.out) / METRICS_FILE}" + (f" and {GRID_FILE}" if (Path(args.out) / GRID_FILE).exists()
                                                     else ""))
