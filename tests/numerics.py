"""The one way tests compare floating-point tensors.

Rule. Two computations of the same value (a fast path and its simple twin, MoT with identical towers
and dense, a cached and a full forward) differ by rounding only, and rounding depends on the order of
every sum: the kernel set (``ATEN_CPU_CAPABILITY`` default / AVX2 / AVX-512), the blocking of a matmul,
and the number of threads splitting it. So they agree to a bound, not bitwise. One rounded operation
is off by at most ``eps = torch.finfo(dtype).eps`` relative; a sum of ``n`` rounded terms drifts by
about ``sqrt(n) * eps`` (errors of random sign; ``n * eps`` is the rare worst case). Hence

    tol = SAFETY * eps * sqrt(reduction)
    |actual - expected| <= tol * |expected| + tol * max|expected|

``reduction`` is the longest chain of summed terms behind one output element: ``K`` for a matmul
over ``K``, ``n_layers * (dim + ffn_hidden + seq_len)`` for a transformer forward or backward
(``transformer_reduction``). The absolute part is measured against the magnitude of the whole
reference: an element that is small because large terms cancelled carries their rounding error, not
its own. ``SAFETY`` covers what the random-walk estimate leaves out (chained layers, norms, softmax);
measured under default / AVX2 / AVX-512 kernels x 1 / 2 threads, the errors of the tests that use
this stay below 3% of ``tol``. A real bug (a wrong weight, a mask off by one position, a dropped
term) moves results by 1e-3 or more of their magnitude: hundreds of times ``tol`` in float32.

When to use float64. A test about algebra (two formulas that must be equal: MoT with copied towers
vs dense, grouped GQA vs full heads, parity with a plain reimplementation of Algorithm 1, a fused
layer vs its per-token loop) runs both sides in float64 (``module.double()``, float64 inputs), where
``tol`` is ~1e-14..1e-13 and even a slip far below float32 resolution shows. Float32 stays for tests
about the float32 or low-precision path itself and for properties of a forward pass (causality,
isolation: ``assert_unchanged`` / ``changed``), run with weights at a trained model's scale so a leak
stands far above ``tol``.

Bitwise equality (``torch.equal``) is for what is guaranteed: the same kernels on the same shapes and
the same inputs in the same process (same-seed determinism, resume exactness, integer outputs).
"""
from __future__ import annotations

import math

import torch

SAFETY = 8.0  # see the module docstring


def tolerance(dtype: torch.dtype, reduction: int) -> float:
    """Relative error budget ``SAFETY * eps(dtype) * sqrt(reduction)`` for a floating dtype."""
    if reduction < 1:
        raise ValueError(f"reduction is a count of summed terms (>= 1), got {reduction}")
    return SAFETY * torch.finfo(dtype).eps * math.sqrt(reduction)


def transformer_reduction(n_layers: int, dim: int, ffn_hidden: int, seq_len: int) -> int:
    """Longest chain of summed terms behind one output (or input-gradient) element of a transformer."""
    return n_layers * (dim + ffn_hidden + seq_len)


def _bounds(expected: torch.Tensor, reduction: int) -> tuple[float, float]:
    """(rtol, atol) for comparing against ``expected``: atol scales with the reference's magnitude."""
    tol = tolerance(expected.dtype, reduction)
    scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
    return tol, tol * scale


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, reduction: int, msg: str = "") -> None:
    """Assert two computations of the same value agree to rounding (see the module docstring).

    Dtypes must match: compare float64 with float64, float32 with float32.
    """
    rtol, atol = _bounds(expected, reduction)
    extra = f" ({msg})" if msg else ""
    torch.testing.assert_close(
        actual, expected, rtol=rtol, atol=atol,
        msg=lambda m: f"{m}\nnumerics: reduction={reduction}, rtol={rtol:.3g}, atol={atol:.3g}{extra}")


def changed(after: torch.Tensor, before: torch.Tensor, *, reduction: int) -> bool:
    """True when ``after`` differs from ``before`` by more than rounding (``assert_close`` would fail)."""
    rtol, atol = _bounds(before, reduction)
    return not torch.allclose(after, before, rtol=rtol, atol=atol)


def assert_unchanged(after: torch.Tensor, before: torch.Tensor, *, reduction: int, msg: str = "") -> None:
    """Causality / isolation: ``after`` (inputs perturbed elsewhere) equals ``before`` up to rounding.

    Not bitwise: a perturbation elsewhere can change the shapes a kernel sees (MoE expert slices) and
    with them the summation order. A leak moves values by orders of magnitude more than ``tolerance``;
    each causality test in tests/model shows its check failing on a deliberately leaky variant.
    """
    assert_close(after, before, reduction=reduction, msg=msg)


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max|a - b| / max|b|``: a measured error in the units of ``tolerance``."""
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(torch.finfo(b.dtype).tiny))
