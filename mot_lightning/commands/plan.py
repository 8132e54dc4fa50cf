"""``mot plan``: parameters, FLOPs and memory per rank of a `mot fit` config, before anything is allocated.

    mot plan --config configs/speech/mot.yaml --config configs/model/chameleon-7b.yaml \
        --config configs/trainer/fsdp2.yaml --devices 8 --precision bf16-mixed --seq-len 4096

Reads the same YAML files as `mot fit` (later files and the flags win) for the backbone, the modalities,
``data.seq_len`` / ``data.batch_size`` (rows per rank), ``trainer.strategy`` / ``devices`` / ``num_nodes`` /
``precision``, ``model.activation_checkpointing``, ``model.sharded_init``, the optimizer and the z-loss. The
joint vocabulary is linked from the tokenizers at run time, so it is a flag (``--vocab-size``, default the
paper's 65,536). The memory model is ``mot_lightning/model/memory.py``; ``--table`` prints the shipped presets.
"""
from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import yaml

from mot_lightning.modality import Modality
from mot_lightning.model.accounting import backbone_stats
from mot_lightning.model.config import TransformerConfig
from mot_lightning.model.memory import MemoryPlan, RunShape, memory_plan, total_parameters
from mot_lightning.model.meta_init import build_on_meta
from mot_lightning.model.towers import parameter_places

GPUS = {"H100 80GB": 80.0, "H200 141GB": 141.0}  # GB of device memory
PRECISION_BYTES = {"32-true": (4, 4), "32": (4, 4), "bf16-mixed": (4, 2), "16-mixed": (4, 2),
                   "bf16-true": (2, 2), "16-true": (2, 2), "64-true": (8, 8)}  # (weights, activations)
GB = 1e9


def merged_config(paths: list[str]) -> dict:
    """The YAML files deep-merged in order (what `mot fit --config A --config B` starts from)."""
    out: dict = {}
    for path in paths:
        _merge(out, yaml.safe_load(Path(path).read_text()) or {})
    return out


def _merge(into: dict, new: dict) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _get(config: dict, dotted: str, default=None):
    for key in dotted.split("."):
        if not isinstance(config, dict) or key not in config:
            return default
        config = config[key]
    return config


def _strategy(config: dict) -> str:
    strategy = _get(config, "trainer.strategy", "auto")
    name = strategy.get("class_path", "") if isinstance(strategy, dict) else str(strategy)
    if name.endswith(("ModelParallelStrategy", "FSDPStrategy")) or name in ("fsdp", "fsdp2"):
        return "fsdp"
    return "ddp" if "ddp" in name.lower() else "single"


def _optimizer_states(config: dict) -> int:
    optimizer = _get(config, "model.optimizer", {}) or {}
    name = optimizer.get("class_path", "AdamW") if isinstance(optimizer, dict) else str(optimizer)
    if name.endswith("SGD"):
        return 1 if float(_get(optimizer, "init_args.momentum", 0) or 0) else 0
    return 2  # AdamW / Adam (the default optimizer): two moments


def backbone_config(config: dict) -> TransformerConfig:
    backbone = dict(_get(config, "model.backbone", {}) or {})
    backbone = dict(backbone.get("init_args", backbone))
    names = {f.name for f in fields(TransformerConfig) if f.init}
    backbone.setdefault("n_modalities", len(_get(config, "data.modalities", None) or ["text", "image"]))
    return TransformerConfig(**{k: v for k, v in backbone.items() if k in names})


def run_shape(config: dict, args: argparse.Namespace) -> RunShape:
    devices = args.devices or _get(config, "trainer.devices", 1)
    devices = 1 if devices in ("auto", None) else int(devices)
    nodes = args.nodes or int(_get(config, "trainer.num_nodes", 1) or 1)
    precision = str(args.precision or _get(config, "trainer.precision", "32-true"))
    if precision not in PRECISION_BYTES:
        raise SystemExit(f"mot plan: unknown precision {precision!r}; one of {sorted(PRECISION_BYTES)}")
    weights, compute = PRECISION_BYTES[precision]
    ac = args.activation_checkpointing if args.activation_checkpointing is not None else bool(
        _get(config, "model.activation_checkpointing", False))
    return RunShape(vocab_size=args.vocab_size, seq_len=args.seq_len or int(_get(config, "data.seq_len", 256)),
                    batch_size=args.batch_size or int(_get(config, "data.batch_size", 1)),
                    world_size=devices * nodes, strategy=args.strategy or _strategy(config), param_bytes=weights,
                    compute_bytes=compute, activation_checkpointing=ac, optimizer_states=_optimizer_states(config),
                    z_loss=bool(_get(config, "model.objective.init_args.z_loss", 0)),
                    latent_dim=args.latent_dim, sharded_init=_meta_build(config))


def _meta_build(config: dict) -> bool:
    """FSDP2 builds on the meta device unless ``model.sharded_init: false``; Lightning's FSDP1 builds eagerly."""
    strategy = _get(config, "trainer.strategy", "auto")
    fsdp1 = isinstance(strategy, dict) and str(strategy.get("class_path", "")).endswith("FSDPStrategy")
    return bool(_get(config, "model.sharded_init", True)) and not fsdp1


def tower_parameters(cfg: TransformerConfig, vocab_size: int) -> dict[str, int]:
    """Parameters by owner (a tower's modalities, or ``shared``), counted on a meta-device model."""
    net = build_on_meta(cfg, vocab_size)
    params = dict(net.named_parameters())
    out: dict[str, int] = {}
    for name, place in parameter_places(net).items():
        owner = "shared" if place.tower is None else "+".join(
            Modality(m).label for m, t in enumerate(cfg.towers) if t == place.tower)
        out[owner] = out.get(owner, 0) + params[name].numel()
    return out


def _h(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def report(cfg: TransformerConfig, shape: RunShape, gpu_memory: float | None = None) -> str:
    total, outside = total_parameters(cfg, shape.vocab_size, shape.latent_dim)
    stats = backbone_stats(cfg, shape.seq_len, vocab_size=shape.vocab_size)
    plan = memory_plan(cfg, shape)
    towers = ", ".join(f"{k} {_h(v)}" for k, v in tower_parameters(cfg, shape.vocab_size).items())
    lines = [f"backbone: {cfg.sparsity}, {cfg.n_towers} tower(s), dim {cfg.dim} x {cfg.n_layers} layers, "
             f"{cfg.n_heads} heads; vocabulary {shape.vocab_size}",
             f"parameters: {_h(total)} ({_h(total - outside)} backbone + {_h(outside)} embedding/head/latent); "
             f"by owner: {towers}",
             f"active per token: {_h(stats.active_params[0] + 2 * shape.vocab_size * cfg.dim)} (with embedding "
             f"and head); training FLOPs per token at seq_len {shape.seq_len}: "
             f"{_h(stats.mean_flops_per_token)} (mean over modalities)",
             f"memory per rank: {shape.strategy} on {shape.world_size} rank(s), weights {shape.param_bytes} B, "
             f"activations {shape.compute_bytes} B, activation checkpointing {shape.activation_checkpointing}, "
             f"{shape.batch_size} row(s) x {shape.seq_len} tokens, {shape.optimizer_states} optimizer state(s)",
             *memory_lines(plan)]
    sizes = dict(GPUS, **({f"given {gpu_memory:g}GB": gpu_memory} if gpu_memory else {}))
    lines.append("fits: " + "; ".join(f"{name}: {'yes' if plan.total <= gb * GB else 'no'} "
                                      f"({100 * plan.total / (gb * GB):.0f}%)" for name, gb in sizes.items()))
    return "\n".join(lines)


def memory_lines(plan: MemoryPlan) -> list[str]:
    rows = [("parameters", plan.parameters), ("gradients", plan.gradients), ("optimizer state", plan.optimizer),
            ("activations", plan.activations), ("transient", plan.transient), ("total (training peak)", plan.total),
            ("start-up (before step 1)", plan.startup)]
    return [f"  {name:<26}{value / GB:9.2f} GB" for name, value in rows]


def table(vocab_size: int, seq_len: int) -> str:
    """Markdown: every shipped paper preset as an MoT x {DDP, FSDP2} x {8, 64} GPUs (bf16-mixed, AdamW,
    activation checkpointing, 1 row per GPU)."""
    head = ("| preset (MoT, modalities) | parameters | DDP, 8 | DDP, 64 | FSDP2, 8 | FSDP2, 64 |\n"
            "|---|---|---|---|---|---|")
    rows, presets = [head], []
    for path in Path(__file__).resolve().parents[2].joinpath("configs/model").glob("*.yaml"):
        if path.stem.startswith(("chameleon-", "transfusion-")):
            n_mod = 3 if path.stem.startswith("chameleon-") else 2  # the speech setting; Transfusion: text + image
            cfg = backbone_config({**merged_config([str(path)]), "data": {"modalities": [0] * n_mod}})
            presets.append((path.stem, n_mod, cfg, total_parameters(cfg, vocab_size)[0]))
    for name, n_mod, cfg, total in sorted(presets, key=lambda p: (p[0].split("-")[0], p[3])):
        cells = []
        for strategy in ("ddp", "fsdp"):
            for world in (8, 64):
                plan = memory_plan(cfg, RunShape(vocab_size=vocab_size, seq_len=seq_len, world_size=world,
                                                 strategy=strategy, param_bytes=4, compute_bytes=2,
                                                 activation_checkpointing=True, z_loss=True))
                fit = "fits 80" if plan.total <= 80 * GB else "fits 141" if plan.total <= 141 * GB else "no"
                cells.append(f"{plan.total / GB:.1f} GB ({fit})")
        rows.append(f"| {name} ({n_mod}) | {_h(total)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="mot plan", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", action="append", default=[], help="`mot fit` YAML files, in order")
    p.add_argument("--vocab-size", type=int, default=65536, help="joint vocabulary (linked from the data at run time)")
    p.add_argument("--latent-dim", type=int, default=0, help="latent patch width (Transfusion), linked at run time")
    p.add_argument("--devices", type=int, default=None, help="GPUs per node (trainer.devices)")
    p.add_argument("--nodes", type=int, default=None, help="trainer.num_nodes")
    p.add_argument("--strategy", choices=["single", "ddp", "fsdp"], default=None)
    p.add_argument("--precision", default=None, help="trainer.precision, e.g. bf16-mixed")
    p.add_argument("--batch-size", type=int, default=None, help="rows per rank (data.batch_size)")
    p.add_argument("--seq-len", type=int, default=None, help="data.seq_len")
    p.add_argument("--activation-checkpointing", type=lambda s: s.lower() in ("1", "true", "yes"), default=None)
    p.add_argument("--gpu-memory", type=float, default=None, help="also say whether it fits this many GB")
    p.add_argument("--table", action="store_true", help="the shipped presets x {DDP, FSDP2} x {8, 64} GPUs")
    args = p.parse_args(argv)
    if args.table:
        print(table(args.vocab_size, args.seq_len or 4096))
        return
    if not args.config:
        p.error("give --config (the `mot fit` YAML files) or --table")
    config = merged_config(args.config)
    print(report(backbone_config(config), run_shape(config, args), args.gpu_memory))


if __name__ == "__main__":
    main()
