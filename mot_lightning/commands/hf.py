"""``mot hf backbone DIR``: the ``model.backbone`` / ``model.init_from`` / text tokenizer YAML that imports a
Hugging Face Llama / Qwen2 / Qwen3 folder (``checkpoints/hf_export.py``, ``checkpoints/hf_folder.py``)."""
from __future__ import annotations

import argparse

from mot_lightning.checkpoints.hf_export import backbone_yaml


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="mot hf", description="Hugging Face Llama / Qwen2 / Qwen3 folders")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("backbone", help="print the model.backbone / init_from / text tokenizer YAML for a folder")
    b.add_argument("folder")
    args = p.parse_args(argv)
    try:
        print(backbone_yaml(args.folder), end="")
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"mot hf backbone: {err}") from None
