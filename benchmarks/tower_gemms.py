"""What splitting a projection into per-tower matmuls costs, apart from everything else in a step.

    python benchmarks/tower_gemms.py                    # 2,048 and 8,192 tokens, torch's default threads
    python benchmarks/tower_gemms.py --scales 1 --threads 1
    python benchmarks/tower_gemms.py --scan             # one forward matmul's time against its rows, cold cache
    python benchmarks/tower_gemms.py --scan --projections all   # the same for every projection of a block
    python benchmarks/tower_gemms.py --scales 1 --cold --kernel onednn   # oneDNN's matmuls instead of MKL's
    python benchmarks/tower_gemms.py --scales 1 --cold --kernel mkl_grouped   # MKL's grouped batch GEMM

An untied linear runs one matmul per tower on its contiguous slice of the tower-sorted tokens
(``UntiedLinear``'s loop kernel); dense runs one matmul on all of them. Here the four projections of
one ``chameleon-37m`` block (dim 256: Q/K/V 256 -> 768, O 256 -> 256, gate/up 256 -> 1408, down
704 -> 256; ``tower_gemms_t2.json`` and ``_run2.json`` predate reading the preset: FFN hidden 683) run forward and both
backward matmuls (input and weight gradient) four ways on the token split of ``backbone.py``'s batch
(342 / 1,024 / 682 text / image / speech tokens per 2,048, times ``--scales``):

- ``dense``         one matmul per projection;
- ``split_same_w``  three matmuls on the three row slices, all with one weight (the cost of the split);
- ``split_3w``      three matmuls, one weight per tower (MoT: also three weights to read and write);
- ``split_even_3w`` as ``split_3w`` with equal slices (does the uneven split matter?).

Timed round-robin per projection (median of ``--reps``); microseconds per block, fwd + bwd. ``--cold``
writes 64 MB before each timed call, so weights and activations come from memory as inside a step.
``--kernel onednn`` runs every matmul through oneDNN (``torch.ops.mkldnn._linear_pointwise``, the kernel
inductor uses for CPU linears) instead of ``torch.mm`` (MKL in the PyPI wheels). It has no ``out=``, so the
per-tower outputs of the forward and input-gradient calls are concatenated, as a layer needs one tensor.
``--kernel mkl_grouped`` runs each of the three matmuls as one call of MKL's grouped batch GEMM
(``cblas_sgemm_batch``, one group per tower, called through ctypes from the MKL that ``libtorch_cpu`` links
and exports): the one API here that takes every tower's matmul in a single call. Float32, x86 wheels only.
Inside a step the split is timed by ``backbone.py``'s ``mot`` against ``mot_one_gemm``
(benchmarks/README.md, "Where MoT's extra step time goes").

``--scan`` times the gate/up forward matmul (``--projections``: any of the four, or ``all``) alone for
row counts ``--rows`` (round-robin), with a 64 MB write before each call so weight and input come from
memory as inside a step, and fits ``time = fixed + per_row * rows`` (least squares): ``fixed`` is what
every extra per-tower call costs whatever its size.
"""
from __future__ import annotations

import argparse
import ctypes
import functools
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from mot_lightning.model import TransformerConfig

SPLIT = (342, 1024, 682)  # tokens per tower in backbone.py's 4 x 512 batch
_CFG = TransformerConfig.from_preset("chameleon-37m", n_modalities=3)
# (in, out) of one block's projections, from the preset itself (dim 256, FFN hidden 704, 4 heads of 64)
PROJECTIONS = {"qkv": (_CFG.dim, (_CFG.n_heads + 2 * _CFG.n_kv_heads) * _CFG.head_dim),
               "o": (_CFG.n_heads * _CFG.head_dim, _CFG.dim),
               "gate_up": (_CFG.dim, 2 * _CFG.ffn_hidden), "down": (_CFG.ffn_hidden, _CFG.dim)}


def matmuls(x, weights, grad, out, grad_x, counts):
    """Forward and both backward matmuls of ``y = x W_k^T`` over row slices ``counts`` (one weight per slice)."""
    parts = zip(x.split(counts), weights, out.split(counts), grad.split(counts), grad_x.split(counts))
    for xs, w, ys, gs, gxs in parts:
        torch.mm(xs, w.t(), out=ys)  # forward
        torch.mm(gs, w, out=gxs)  # input gradient
        torch.mm(gs.t(), xs)  # weight gradient


def onednn_matmuls(x, weights, grad, out, grad_x, counts):
    """``matmuls`` through oneDNN: ``linear(a, b) = a b^T`` returns a new tensor, so with several slices the
    forward outputs and the input gradients are concatenated into one tensor each (``out``/``grad_x`` unused)."""
    linear = torch.ops.mkldnn._linear_pointwise
    ys, gxs = [], []
    for xs, w, gs in zip(x.split(counts), weights, grad.split(counts)):
        ys.append(linear(xs, w, None, "none", [None], ""))  # forward
        gxs.append(linear(gs, w.t(), None, "none", [None], ""))  # input gradient
        linear(gs.t(), xs.t(), None, "none", [None], "")  # weight gradient
    if len(ys) > 1:
        torch.cat(ys)
        torch.cat(gxs)


@functools.cache
def _sgemm_batch():
    """MKL's ``cblas_sgemm_batch`` as ``libtorch_cpu`` exports it (LP64: 32-bit sizes)."""
    try:
        return ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so")).cblas_sgemm_batch
    except (OSError, AttributeError):
        raise SystemExit("--kernel mkl_grouped needs a Linux torch build that links MKL and exports its "
                         "cblas_sgemm_batch (the x86 PyPI wheels do)") from None


_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112  # CBLAS enum values


def grouped_gemm(trans_a: bool, trans_b: bool, a: list, b: list, c: list) -> None:
    """``c[g] = op(a[g]) @ op(b[g])`` for every g in one MKL call, one group of one matmul per g (row-major
    float32 with unit column stride; ``op`` transposes where asked)."""
    g = len(c)

    def arr(kind, values):
        return (kind * g)(*values)

    ints, ptrs = ctypes.c_int, ctypes.c_void_p
    k = [t.shape[0] if trans_a else t.shape[1] for t in a]
    _sgemm_batch()(
        ints(_ROW_MAJOR), arr(ints, [_TRANS if trans_a else _NO_TRANS] * g),
        arr(ints, [_TRANS if trans_b else _NO_TRANS] * g),
        arr(ints, [t.shape[0] for t in c]), arr(ints, [t.shape[1] for t in c]), arr(ints, k),
        arr(ctypes.c_float, [1.0] * g), arr(ptrs, [t.data_ptr() for t in a]), arr(ints, [t.stride(0) for t in a]),
        arr(ptrs, [t.data_ptr() for t in b]), arr(ints, [t.stride(0) for t in b]),
        arr(ctypes.c_float, [0.0] * g), arr(ptrs, [t.data_ptr() for t in c]), arr(ints, [t.stride(0) for t in c]),
        ints(g), arr(ints, [1] * g))


def grouped_matmuls(x, weights, grad, out, grad_x, counts):
    """``matmuls`` with each of the three matmuls as one grouped MKL call over the slices (the weight gradients
    are new tensors, as ``torch.mm`` makes them in ``matmuls``)."""
    xs, gs = x.split(counts), grad.split(counts)
    grouped_gemm(False, True, xs, weights, out.split(counts))  # forward
    grouped_gemm(False, False, gs, weights, grad_x.split(counts))  # input gradient
    grouped_gemm(True, False, gs, xs, [torch.empty_like(w) for w in weights])  # weight gradient


def check_grouped() -> None:
    """Stop unless ``grouped_gemm`` gives ``torch.mm``'s products for uneven slices (all three layouts)."""
    counts, d_in, d_out = [5, 0, 11], 7, 9
    x, grad, ws = torch.randn(16, d_in), torch.randn(16, d_out), [torch.randn(d_out, d_in) for _ in counts]
    out, grad_x, grad_w = torch.empty(16, d_out), torch.empty(16, d_in), [torch.empty(d_out, d_in) for _ in counts]
    xs, gs = x.split(counts), grad.split(counts)
    grouped_gemm(False, True, xs, ws, out.split(counts))
    grouped_gemm(False, False, gs, ws, grad_x.split(counts))
    grouped_gemm(True, False, gs, xs, grad_w)
    pairs = [(out, torch.cat([a @ w.t() for a, w in zip(xs, ws)])),
             (grad_x, torch.cat([g @ w for g, w in zip(gs, ws)])),
             *zip(grad_w, [g.t() @ a for g, a in zip(gs, xs)])]  # the empty slice's gradient is zeros
    for got, want in pairs:
        torch.testing.assert_close(got, want)  # float32 defaults: rtol 1.3e-6, atol 1e-5


KERNELS = {"mkl": matmuls, "onednn": onednn_matmuls, "mkl_grouped": grouped_matmuls}


def round_robin(cases: dict, reps: int, before=None) -> dict:
    """Median seconds of each case's call, timed one call of every case per round (slow drift of the machine
    hits all alike) after 3 warm-up rounds; ``before()`` runs untimed ahead of each call."""
    times: dict = {k: [] for k in cases}
    for rep in range(reps + 3):
        for k, fn in cases.items():
            if before is not None:
                before()
            t0 = time.perf_counter()
            fn()
            if rep >= 3:
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def measure(scale: int, reps: int, kernel: str = "mkl", cold: bool = False) -> dict:
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
        run = KERNELS[kernel]
        cases = {
            "dense": lambda: run(x, [w], grad, out, grad_x, [n]),
            "split_same_w": lambda: run(x, [w] * 3, grad, out, grad_x, counts),
            "split_3w": lambda: run(x, ws, grad, out, grad_x, counts),
            "split_even_3w": lambda: run(x, ws, grad, out, grad_x, even),
        }
        medians = round_robin(cases, reps, before=flush if cold else None)
        per_projection[name] = {k: t * 1e6 for k, t in medians.items()}
        for k, v in per_projection[name].items():
            totals[k] = totals.get(k, 0.0) + v
    return {"tokens": n, "split": counts, "per_projection_us": per_projection, "block_us": totals,
            "vs_dense": {k: v / totals["dense"] for k, v in totals.items()}}


@functools.cache
def _flush_buffer() -> torch.Tensor:
    return torch.empty(16 * 2**20)  # 64 MB: more than this VM's L2 + L3 share


def flush() -> None:
    """Write 64 MB: evicts the next call's weight, input and output."""
    _flush_buffer().add_(1.0)


def scan(rows: list[int], reps: int, projection: str = "gate_up") -> dict:
    """Cold-cache time of one forward matmul of ``projection`` per row count, and the fitted fixed + per-row cost."""
    d_in, d_out = PROJECTIONS[projection]
    w = torch.randn(d_out, d_in)
    inputs = {m: (torch.randn(m, d_in), torch.empty(m, d_out)) for m in rows}
    cases = {m: functools.partial(torch.mm, x, w.t(), out=out) for m, (x, out) in inputs.items()}
    medians = round_robin(cases, reps, before=flush)
    points = [{"rows": m, "ms": t * 1e3, "gflops": 2 * m * d_in * d_out / t / 1e9} for m, t in medians.items()]
    a = torch.tensor([[1.0, p["rows"]] for p in points], dtype=torch.float64)
    b = torch.tensor([[p["ms"]] for p in points], dtype=torch.float64)
    fixed, per_row = torch.linalg.lstsq(a, b).solution.flatten().tolist()
    return {"projection": f"{d_in} -> {d_out}", "name": projection, "weight_mb": d_in * d_out * 4 / 2**20,
            "points": points, "fixed_ms": fixed, "per_row_us": per_row * 1e3}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scales", default="1,4", help="token multiples of the 2,048-token split")
    p.add_argument("--reps", type=int, default=60)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--scan", action="store_true", help="cold-cache time of one forward matmul against its rows")
    p.add_argument("--rows", default="128,256,342,512,682,1024,2048", help="row counts for --scan")
    p.add_argument("--projections", default="gate_up",
                   help=f"--scan: comma-separated among {','.join(PROJECTIONS)}, or 'all'")
    p.add_argument("--cold", action="store_true", help="block timing: evict the caches before every timed call")
    p.add_argument("--kernel", choices=sorted(KERNELS), default="mkl",
                   help="block timing: torch.mm (MKL), oneDNN's linear, or MKL's grouped batch GEMM")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    report = {"config": vars(args), "machine": {"platform": platform.platform(), "torch": torch.__version__,
                                                 "threads": threads}}
    if args.scan:
        names = list(PROJECTIONS) if args.projections == "all" else args.projections.split(",")
        unknown = set(names) - set(PROJECTIONS)
        if unknown:
            raise SystemExit(f"unknown --projections {sorted(unknown)}; choose from {', '.join(PROJECTIONS)} or 'all'")
        report["scans"] = []
        for name in names:
            r = scan([int(r) for r in args.rows.split(",")], args.reps, name)
            report["scans"].append(r)
            print(f"threads={threads}  {name} ({r['projection']}, weight {r['weight_mb']:.2f} MB) forward, cold cache")
            for pt in r["points"]:
                print(f"{pt['rows']:>6} rows {pt['ms']:>8.3f} ms {pt['gflops']:>7.1f} GFLOP/s")
            print(f"fit: {r['fixed_ms']:.3f} ms per call + {r['per_row_us']:.3f} us per row")
    else:
        if args.kernel == "mkl_grouped":
            check_grouped()
        rows = report["results"] = [measure(int(s), args.reps, args.kernel, args.cold)
                                    for s in args.scales.split(",")]
        print(f"threads={threads}  kernel={args.kernel}  cache={'cold' if args.cold else 'warm'}  "
              "microseconds per block (4 projections, forward + backward)")
        print(f"{'tokens':>7} " + " ".join(f"{k:>22}" for k in rows[0]["block_us"]))
        for r in rows:
            print(f"{r['tokens']:>7} " + " ".join(f"{v:>13.0f} ({r['vs_dense'][k]:.3f})"
                                                  for k, v in r["block_us"].items()))
    name = f"tower_gemms_{'scan_' if args.scan else ''}t{threads}.json"
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
