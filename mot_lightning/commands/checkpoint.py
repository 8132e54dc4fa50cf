"""``mot checkpoint``: tools for checkpoint files.

    mot checkpoint consolidate <sharded checkpoint dir> --out model.ckpt
        one file (full state_dict + step + hyperparameters + callback states such as the EMA averages)
        from an FSDP2 sharded checkpoint, for `mot generate --ckpt [--ema]` and `mot export --ckpt [--ema]`
        (not for resuming: no optimizer state)
"""
from __future__ import annotations

import argparse

from mot_lightning.checkpoints.consolidate import consolidate


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mot checkpoint", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("consolidate", help="one checkpoint file from a sharded (FSDP2) checkpoint directory")
    c.add_argument("directory", help="the sharded checkpoint, e.g. <run dir>/checkpoints/last.ckpt/")
    c.add_argument("--out", required=True, help="the file to write (replaced atomically if it exists)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "consolidate":
        checkpoint = consolidate(args.directory, args.out)
        n = sum(t.numel() for t in checkpoint["state_dict"].values())
        print(f"wrote {args.out}: {len(checkpoint['state_dict'])} tensors, {n:,} values, "
              f"step {checkpoint.get('global_step')}")
