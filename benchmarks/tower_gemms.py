"""What splitting a projection into per-tower matmuls costs, apart from everything else in a step.

    python benchmarks/tower_gemms.py                    # 2,048 and 8,192 tokens, torch's default threads
    python benchmarks/tower_gemms.py --scales 1 --threads 1

An untied linear runs one matmul per tower on its contiguous slice of the tower-sorted tokens
(``UntiedLinear``'s loop kernel); dense runs one matmul on all of them. Here the four projections of
one ``chameleon-37m`` block (dim 256: Q/K/V 256 -> 768, O 256 -> 256, gate/up 256 -> 1366, down
683 -> 256) run forward and both backward matmuls (input and weight gradient) four ways on the token
split of ``backbone.py``'s batch (342 / 1,024 / 682 text / image / speech tokens per 2,048, times
``--scales``):

- ``dense``         one matmul per projection;
- ``split_same_w``  three matmuls on the three row slices, all with one weight (the cost of the split);
- ``split_3w``      three matmuls, one weight per tower (MoT: also three weights to read and write);
- ``split_even_3w`` as ``split_3w`` with equal slices (does the uneven split matter?).

Timed round-robin per projection (median of ``--reps``); microseconds per block, fwd + bwd.
In isolation (hot caches, reused buffers) the split costs far less than inside the model: compare
``backbone.py``'s ``mot`` with ``mot_one_gemm`` (benchmarks/README.md, "Where MoT's extra step time goes").
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

SPLIT = (342, 1024, 682)  # tokens per tower in backbone.py's 4 x 512 batch
PROJECTIONS = {"qkv": (256, 768), "o": (256, 256), "gate_up": (256, 1366), "down": (683, 256)}


def matmuls(x, weights, grad, out, grad_x, counts):
    """Forward and both backward matmuls of ``y = x W_k^T`` over row slices ``counts`` (one weight per slice)."""
    parts = zip(x.split(counts), weights, out.split(counts), grad.split(counts), grad_x.split(counts))
    for xs, w, ys, gs, gxs in parts:
        torch.mm(xs, w.t(), out=ys)  # forward
        torch.mm(gs, w, out=gxs)  # input gradient
        torch.mm(gs.t(), xs)  # weight gradient


def measure(scale: int, reps: int) -> dict:
    counts = [c * scale for c in SPLIT]
    n = sum(counts)
    even = [n // 3 + (1 if k < n % 3 else 0) for k in range(3)]
    totals: dict[str, float] = {}
    per_projection = {}
    for name, (d_in, d_out) in PROJECTIONS.items():
        x, grad = torch.randn(n, d_in), torch.randn(n, d_out)
        out, grad_x = torch.empty(n, d_out), torch.empty(n, d_in)
        w = torch.randn(d_out, d_in)
        ws = [torch.randn(d_out, d_in) for _ in range(3)]
        cases = {
            "dense": lambda: matmuls(x, [w], grad, out, grad_x, [n]),
            "split_same_w": lambda: matmuls(x, [w] * 3, grad, out, grad_x, counts),
            "split_3w": lambda: matmuls(x, ws, grad, out, grad_x, counts),
            "split_even_3w": lambda: matmuls(x, ws, grad, out, grad_x, even),
        }
        times: dict[str, list[float]] = {k: [] for k in cases}
        for rep in range(reps + 3):
            for k, fn in cases.items():
                t0 = time.perf_counter()
                fn()
                if rep >= 3:  # warm-up
                    times[k].append(time.perf_counter() - t0)
        per_projection[name] = {k: statistics.median(v) * 1e6 for k, v in times.items()}
        for k, v in per_projection[name].items():
            totals[k] = totals.get(k, 0.0) + v
    return {"tokens": n, "split": counts, "per_projection_us": per_projection, "block_us": totals,
            "vs_dense": {k: v / totals["dense"] for k, v in totals.items()}}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scales", default="1,4", help="token multiples of the 2,048-token split")
    p.add_argument("--reps", type=int, default=60)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [measure(int(s), args.reps) for s in args.scales.split(",")]
    print(f"threads={torch.get_num_threads()}  microseconds per block (4 projections, forward + backward)")
    print(f"{'tokens':>7} " + " ".join(f"{k:>22}" for k in rows[0]["block_us"]))
    for r in rows:
        print(f"{r['tokens']:>7} " + " ".join(f"{v:>13.0f} ({r['vs_dense'][k]:.3f})"
                                              for k, v in r["block_us"].items()))
    out = Path(args.out) if args.out else (Path(__file__).resolve().parent / "results"
                                           / f"tower_gemms_t{torch.get_num_threads()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"config": vars(args), "machine": {"platform": platform.platform(), "torch": torch.__version__,
                                                 "threads": torch.get_num_threads()}, "results": rows}
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
