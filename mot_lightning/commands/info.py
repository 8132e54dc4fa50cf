"""``mot info``: parameters and FLOPs per token of a backbone config (no weights are built)."""
from __future__ import annotations

import argparse

from mot_lightning.modality import Modality
from mot_lightning.model.accounting import backbone_stats
from mot_lightning.model.config import PRESETS, TransformerConfig


def _human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="mot info", description=__doc__)
    p.add_argument("--preset", default="chameleon-37m", choices=sorted(PRESETS))
    p.add_argument("--modalities", type=int, default=2, help="number of modalities (text, image[, speech])")
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--vocab-size", type=int, default=65536, help="shared vocabulary (embedding + head)")
    args = p.parse_args(argv)
    print(f"{'sparsity':<8} {'towers':>6} {'backbone':>10} {'+emb/head':>10} {'active/tok':>11} "
          f"{'train FLOPs/tok':>16}")
    for sparsity in ("dense", "mot"):
        cfg = TransformerConfig.from_preset(args.preset, n_modalities=args.modalities, sparsity=sparsity)
        stats = backbone_stats(cfg, args.seq_len, vocab_size=args.vocab_size)
        embed = 2 * args.vocab_size * cfg.dim
        active = stats.active_params[Modality.TEXT]
        print(f"{sparsity:<8} {cfg.n_towers:>6} {_human(stats.total_params):>10} "
              f"{_human(stats.total_params + embed):>10} {_human(active):>11} "
              f"{_human(stats.flops_per_token[Modality.TEXT]):>16}")


if __name__ == "__main__":
    main()
