"""``mot export``: a trained model as one folder that travels (weights, config, tokenizers).

    mot export --ckpt runs/speech/mot/<run>/checkpoints/last.ckpt --config configs/speech/mot.yaml --out DIR
        [--ema]             (the EMA averages the run's EMA callback kept, instead of the live weights)
        [--key value ...]   (as for `mot generate`: e.g. --data.tokenizer_files.dir DIR)
        [--format hf [--tower text]]  (one tower as a Hugging Face Llama / Qwen2 / Qwen3 folder instead)

What the folder holds: ``checkpoints/export.py`` and ``checkpoints/weights.py``. A sharded FSDP2 checkpoint is
consolidated first (``mot checkpoint consolidate``, which keeps the EMA averages).
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from mot_lightning.building import build_cli
from mot_lightning.checkpoints.export import write_export
from mot_lightning.checkpoints.hf_export import write_hf
from mot_lightning.checkpoints.weights import weights_source
from mot_lightning.modality import Modality


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mot export", description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                epilog="any other --key value is passed to the training config (LightningCLI)")
    p.add_argument("--ckpt", required=True, help="a checkpoint file (consolidate a sharded one first)")
    p.add_argument("--config", action="append", required=True, help="the run's YAML (repeatable, as for fit)")
    p.add_argument("--out", required=True, help="the folder to write (must not exist or be empty)")
    p.add_argument("--ema", action="store_true", help="export the EMA averages of the weights (the "
                   "checkpoint must hold them: the run had an EMA callback) instead of the live weights")
    p.add_argument("--format", choices=("app", "hf"), default="app", help="app: this folder layout (default); "
                   "hf: a Hugging Face folder of one tower that transformers loads (checkpoints/hf_export.py)")
    p.add_argument("--tower", default="text", help="with --format hf: the modality whose tower to write")
    return p


def main(argv: list[str] | None = None) -> None:
    args, overrides = _parser().parse_known_args(argv)
    source = weights_source(args.ckpt, None, args.config, overrides, ema=args.ema)  # checked before building
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SystemExit(f"mot export: --out {out} exists and is not empty: choose a new folder")
    cli = build_cli(source.configs, source.overrides, source.checkpoint)
    step = source.load_into(cli.model)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if args.format == "hf":
            dm = cli.datamodule
            write_hf(cli.model, dm.vocab, dm.tokenizers[Modality.TEXT], tmp, Modality.parse(args.tower))
        else:
            write_export(cli, tmp, source.path.resolve(), step, final=out, weights_kind=source.kind)
        if out.exists():
            out.rmdir()  # empty (checked above)
        tmp.rename(out)  # the folder appears complete or not at all
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"exported {source.path} (step {step}, {source.kind} weights) to {out}")
