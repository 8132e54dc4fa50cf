"""Backbone step time and memory: dense vs MoT vs the tutorial's mask routing, at matched shapes.

    python benchmarks/backbone.py                       # CPU, dim 256, seq 512, 3 modalities
    python benchmarks/backbone.py --quick               # a 20-second smoke run
    python benchmarks/backbone.py --device cuda --dtype bf16 --preset chameleon-443m \
        --seq-len 4096 --batch 4                        # GPU variant
    python benchmarks/backbone.py --cases dense,mot,mot_grouped_mm   # per-tower loop vs one grouped GEMM
    python benchmarks/backbone.py --cases dense,mot_untie_none,mot_no_gather,mot_one_gemm,mot,dense_again
                                                        # where MoT's extra time goes (attribution cases)
    python benchmarks/backbone.py --cases dense,mot,dense_rms_norm,mot_rms_norm
                                                        # the hand-written CPU norm against F.rms_norm

One *step* is forward + backward of ``out.pow(2).mean()`` on a batch whose
sequences interleave text runs, fixed-size image runs and speech runs (like
interleaved documents). Cases are timed round-robin (one step of each per
round) so slow drift of the machine hits all of them alike; the median is
reported. Memory: CUDA peak allocated, or on CPU the bytes saved for backward
(activations, parameters excluded, via saved-tensor hooks) plus the process peak RSS.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tutorial_mot import TutorialTransformer  # noqa: E402

from mot_lightning.model import Transformer, TransformerConfig  # noqa: E402
from mot_lightning.model.untied import UntiedLinear, UntiedRMSNorm  # noqa: E402


def interleaved_batch(batch: int, seq_len: int, n_modalities: int, image_tokens: int, seed: int = 0):
    """long[B, T] modality ids: text runs 8-64, image runs of ``image_tokens``, speech runs 16-96."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batch):
        row: list[int] = []
        while len(row) < seq_len:
            m = int(torch.randint(0, n_modalities, (1,), generator=g))
            n = {0: int(torch.randint(8, 65, (1,), generator=g)), 1: image_tokens,
                 2: int(torch.randint(16, 97, (1,), generator=g))}[m]
            row.extend([m] * n)
        rows.append(row[:seq_len])
    return torch.tensor(rows)


class SavedBytes:
    """Counts bytes of distinct storages autograd saves for backward, parameters excluded
    (the activation memory a training step holds at its peak)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.seen: dict[int, int] = {}

    def pack(self, t: torch.Tensor):
        storage = t.untyped_storage()
        if storage.data_ptr() not in self.params:
            self.seen[storage.data_ptr()] = storage.nbytes()
        return t

    @property
    def total(self) -> int:
        return sum(self.seen.values())


def step(model, x, modality, routed: bool) -> None:
    out = model(x, modality)
    out.float().pow(2).mean().backward()


# every backbone of the paper's comparisons, as changes to the base config
VARIANTS = {
    "dense": dict(sparsity="dense"),
    # a second dense model timed in the same rounds: its ratio to "dense" is the benchmark's own noise floor
    "dense_again": dict(sparsity="dense"),
    "mot": dict(sparsity="mot"),
    # MoT's routing alone: tokens sorted by tower and attention's gathers, every weight tied (dense's math)
    "mot_untie_none": dict(sparsity="mot", untie=[]),
    # MoT with one weight shared by all towers (set up in build_cases): is it the weight bytes or the kernels?
    "mot_one_weight": dict(sparsity="mot"),
    # attribution only, wrong outputs (set up in build_cases): MoT with every untied linear as one matmul of
    # tower 0's weight over all tokens (routing, gathers and untied norms kept: the per-tower matmuls removed)
    "mot_one_gemm": dict(sparsity="mot"),
    # attribution only, wrong outputs: MoT without the gathers (towers split the tokens by count, in sequence
    # order: the same matmuls and norms, no reordering)
    "mot_no_gather": dict(sparsity="mot"),
    # norms on F.rms_norm (+ a per-tower scale when untied) instead of the hand-written CPU norm (set up in
    # build_cases): what that norm saves each arm
    "dense_rms_norm": dict(sparsity="dense"),
    "mot_rms_norm": dict(sparsity="mot"),
    # the same MoT, each projection's towers in one torch._grouped_mm (CUDA sm90+ in bf16; CPU any dtype)
    "mot_grouped_mm": dict(sparsity="mot", grouped_gemm="grouped_mm"),
    "mot_untie_ffn": dict(sparsity="mot", untie=["ffn"]),
    "mot_untie_ffn_attn": dict(sparsity="mot", untie=["ffn", "attn"]),
    "moe4x_ec": dict(sparsity="moe", moe_router="expert_choice"),
    "moe4x_tc": dict(sparsity="moe", moe_router="token_choice"),
    "hybrid_text_moe": dict(sparsity="mot", moe_towers=[0]),
}


def _one_gemm(module: UntiedLinear, x, routing):
    """``mot_one_gemm``'s untied linear: one matmul of tower 0's weight over every token."""
    return torch.nn.functional.linear(x, module.weights[0])


def _context_without_gathers(model: Transformer, modality, **kwargs):
    """``mot_no_gather``'s batch context: the tower sizes of the real routing, no permutation."""
    ctx = Transformer.context(model, modality, **kwargs)
    return dataclasses.replace(ctx, routing=dataclasses.replace(ctx.routing, order=None, inverse=None))


def build_cases(args, device, dtype):
    base = TransformerConfig.from_preset(args.preset, n_modalities=args.modalities, attn_backend="sdpa")
    names = args.cases.split(",")
    unknown = set(names) - set(VARIANTS) - {"tutorial"}
    if "dense" not in names:
        raise SystemExit("--cases must include 'dense' (every ratio is against it)")
    if unknown:
        raise SystemExit(f"unknown --cases {sorted(unknown)}; choose from {sorted(VARIANTS)} and 'tutorial'")
    torch.manual_seed(0)
    cases = {name: Transformer(base.replace(**VARIANTS[name])) for name in names if name != "tutorial"}
    if "mot_one_weight" in cases:  # every tower holds the same Parameter: dense's weight bytes, MoT's kernels
        for module in cases["mot_one_weight"].modules():
            if isinstance(module, (UntiedLinear, UntiedRMSNorm)) and module.n_weights > 1:
                for k in range(1, module.n_weights):
                    module.weights[k] = module.weights[0]
    if "mot_one_gemm" in cases:
        for module in cases["mot_one_gemm"].modules():
            if isinstance(module, UntiedLinear) and module.n_weights > 1:
                module.forward = functools.partial(_one_gemm, module)
    for name in {"dense_rms_norm", "mot_rms_norm"} & set(cases):
        for module in cases[name].modules():
            if isinstance(module, UntiedRMSNorm):
                module.forward = module.rms_norm_path
    if "mot_no_gather" in cases:
        cases["mot_no_gather"].context = functools.partial(_context_without_gathers, cases["mot_no_gather"])
    if "tutorial" in names:
        cases["tutorial"] = TutorialTransformer(cases.get("mot") or Transformer(base.replace(sparsity="mot")))
    cases = {name: m.to(device=device, dtype=dtype) for name, m in cases.items()}
    if args.compile:  # every block compiled, as ``model.compile: true`` does in training
        for name, m in cases.items():
            if name != "tutorial":
                m.compile_blocks()
    return cases, base


def check_tutorial_matches(cases, x, modality) -> float:
    with torch.no_grad():
        ours, theirs = cases["mot"](x, modality).float(), cases["tutorial"](x, modality).float()
    return float((ours - theirs).abs().max())


def measure_memory(model, x, modality, device) -> dict:
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(model, x, modality, True)
        torch.cuda.synchronize()
        return {"peak_mb": (torch.cuda.max_memory_allocated() - base) / 2**20}
    saved = SavedBytes(model)
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        step(model, x, modality, True)
    return {"saved_for_backward_mb": saved.total / 2**20}


def timed_step(model, x, modality, device, clock=time.perf_counter) -> float:
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = clock()
    step(model, x, modality, True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return clock() - t0


def run(args) -> dict:
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)
    cases, cfg = build_cases(args, device, dtype)
    modality = interleaved_batch(args.batch, args.seq_len, args.modalities, args.image_tokens).to(device)
    x = torch.randn(args.batch, args.seq_len, cfg.dim, device=device, dtype=dtype, requires_grad=True)
    max_diff = check_tutorial_matches(cases, x, modality) if {"tutorial", "mot"} <= set(cases) else None
    memory = {name: measure_memory(m, x, modality, device) for name, m in cases.items()}
    # --cpu-time: process CPU seconds instead of wall seconds; with --threads 1 this is robust to
    # other load on a shared machine (wall time is what matters on a quiet one)
    clock = time.process_time if args.cpu_time else time.perf_counter
    for _ in range(args.warmup):
        for m in cases.values():
            timed_step(m, x, modality, device, clock)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.steps):
        for name, m in cases.items():
            times[name].append(timed_step(m, x, modality, device, clock))
    tokens = args.batch * args.seq_len
    dense_ms = statistics.median(times["dense"]) * 1e3
    rows = {}
    for name, ts in times.items():
        ms = statistics.median(ts) * 1e3
        rows[name] = {"median_ms": ms, "min_ms": min(ts) * 1e3, "ratio_vs_dense": ms / dense_ms,
                      "tokens_per_s": tokens / (ms / 1e3), **memory[name]}
    counts = torch.bincount(modality.flatten(), minlength=args.modalities).tolist()
    return {
        "config": {**vars(args), "dim": cfg.dim, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
                   "tokens_per_modality": counts},
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor()},
        "tutorial_max_abs_diff": max_diff,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "results": rows,
    }


def print_table(report: dict) -> None:
    c = report["config"]
    print(f"preset={c['preset']} dim={c['dim']} layers={c['n_layers']} batch={c['batch']} "
          f"seq={c['seq_len']} modalities={c['modalities']} tokens/modality={c['tokens_per_modality']} "
          f"device={c['device']} dtype={c['dtype']} threads={report['machine']['threads']} "
          f"clock={'process CPU time' if c['cpu_time'] else 'wall'}{' compiled' if c.get('compile') else ''}")
    if report["tutorial_max_abs_diff"] is not None:
        print(f"tutorial routing vs ours, max |diff| of outputs: {report['tutorial_max_abs_diff']:.2e}")
    mem_key = "peak_mb" if c["device"].startswith("cuda") else "saved_for_backward_mb"
    print(f"{'case':<19} {'median ms':>10} {'min ms':>9} {'vs dense':>9} {'tokens/s':>10} {mem_key:>22}")
    for name, r in report["results"].items():
        print(f"{name:<19} {r['median_ms']:>10.1f} {r['min_ms']:>9.1f} {r['ratio_vs_dense']:>9.3f} "
              f"{r['tokens_per_s']:>10.0f} {r[mem_key]:>22.1f}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="chameleon-37m", help="backbone size preset (dim 256 x 4 layers)")
    p.add_argument("--modalities", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--image-tokens", type=int, default=64, help="length of one image run")
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--cpu-time", action="store_true", help="time with process CPU time (use with --threads 1)")
    p.add_argument("--cases", default="dense,mot,tutorial",
                   help=f"comma-separated, 'dense' first: {','.join(VARIANTS)},tutorial")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every block (as model.compile: true); the warm-up rounds compile")
    p.add_argument("--quick", action="store_true", help="small shapes, few steps (smoke run)")
    p.add_argument("--out", default=None, help="JSON file to write (default: benchmarks/results/<name>.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.preset, args.batch, args.seq_len, args.steps, args.warmup = "cpu-small", 2, 256, 5, 1
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    report = run(args)
    print_table(report)
    out = Path(args.out) if args.out else (
        Path(__file__).resolve().parent / "results"
        / f"backbone_{args.device}_{args.preset}_{args.seq_len}_b{args.batch}_t{args.threads}"
        f"{'_cpu' if args.cpu_time else ''}{'_compiled' if args.compile else ''}"
        f"_{len(args.cases.split(','))}cases.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
