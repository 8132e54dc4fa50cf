"""Seeded k-means (k-means++ init, Lloyd iterations, empty clusters re-seeded) in plain torch.

Shared by the k-means image tokenizer and the speech-unit tokenizer. Deterministic for a
given seed and input on one device.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

import torch

log = logging.getLogger("mot_lightning.tokenizers")


@torch.no_grad()
def nearest(x: torch.Tensor, codebook: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    """float[N, D], float[K, D] -> long[N]: index of the closest code (squared L2)."""
    c2 = (codebook * codebook).sum(1)  # (K,)
    out = [(c2[None] - 2.0 * xs @ codebook.T).argmin(1) for xs in x.split(chunk)]  # ||x||^2 is constant per row
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=x.device)


@torch.no_grad()
def kmeans(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0, tol: float = 1e-4,
           name: str = "k-means") -> torch.Tensor:
    """float[N, D] -> codebook float[k, D]. Logs inertia per iteration (progress)."""
    n = x.shape[0]
    if n < k:
        raise ValueError(
            f"{name}: need at least {k} training vectors to fit {k} codes, got {n}; "
            f"lower codebook_size or add training data"
        )
    x = x.float()
    g = torch.Generator(device="cpu").manual_seed(seed)
    with _one_thread():
        centers = _kmeans_pp(x, k, g)
    prev = float("inf")
    t0 = time.perf_counter()
    for it in range(iters):
        ids = nearest(x, centers)
        sq_err = ((x - centers[ids]) ** 2).sum(1)  # (N,)
        inertia = float(sq_err.mean())
        centers = _update(x, ids, sq_err, k)
        log.info("%s iter %d/%d: mean sq. error %.5f (%.1fs)", name, it + 1, iters, inertia, time.perf_counter() - t0)
        if prev != float("inf") and prev - inertia <= tol * prev:
            break
        prev = inertia
    return centers


def _update(x: torch.Tensor, ids: torch.Tensor, sq_err: torch.Tensor, k: int) -> torch.Tensor:
    counts = torch.bincount(ids, minlength=k)  # (K,)
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype).index_add_(0, ids, x)
    centers = sums / counts.clamp(min=1)[:, None].to(x.dtype)
    empty = (counts == 0).nonzero().flatten()
    if len(empty):  # re-seed empty clusters at the worst-fitted points
        worst = sq_err.topk(min(len(empty), len(sq_err))).indices
        centers[empty[: len(worst)]] = x[worst]
    return centers


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """k-means++ is k sequential tiny ops; intra-op thread fork/join would dominate them (100x slower
    with 2 busy cores), so run it single-threaded and restore the caller's setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _kmeans_pp(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """k-means++ seeding on a random subsample of ~20 points per code (init is O(20 k^2 D), not O(N k D))."""
    max_points = max(20 * k, 5_000)
    if x.shape[0] > max_points:
        x = x[torch.randperm(x.shape[0], generator=g)[:max_points]]
    first = int(torch.randint(x.shape[0], (1,), generator=g))
    centers = [x[first]]
    x2 = (x * x).sum(1)  # (N,)
    d2 = (x2 - 2 * x @ x[first] + x2[first]).clamp(min=0)  # (N,) sq. distance to the closest chosen center
    for _ in range(1, k):
        total = float(d2.sum())
        if total > 0:
            idx = int(torch.multinomial(d2 / total, 1, generator=g))
        else:  # fewer distinct points than codes: duplicates are harmless
            idx = int(torch.randint(x.shape[0], (1,), generator=g))
        centers.append(x[idx])
        d2 = torch.minimum(d2, (x2 - 2 * x @ x[idx] + x2[idx]).clamp(min=0))
    return torch.stack(centers)
