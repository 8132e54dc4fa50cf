"""Sampling errors: how much a generation metric would move with another draw of the same number of samples.

Every metric ``evaluate`` reports carries a standard error next to its value:

- an accuracy over ``n`` independent judgements: the binomial ``sqrt(p (1 - p) / n)`` (``binomial_se``);
- anything else (FID, KID, CLIPScore, BLEU, WER / CER, the speech-unit metrics): the bootstrap. The samples
  behind the value (generated pictures with their real counterparts, captions with their references,
  clips with their transcripts) are drawn again with replacement ``N_BOOTSTRAP`` times under a seeded
  generator, the metric is recomputed on each draw, and the standard deviation of those values is the
  error (``bootstrap_se``). FID and KID resample the two image sets independently, in features computed
  once (``distribution_errors``); KID's within-set sums leave out pairs of copies of one drawn sample.

A bootstrap of a few hundred draws estimates the error itself to about ``1 / sqrt(2 N_BOOTSTRAP)`` of its
size (5% at 200): enough to tell a difference of three errors from one of one. ``mot compare`` combines
these errors with the spread between seeds (``compare/report.py``).

FID and KID are computed here from features with the textbook formulas (``fid_from_features``,
``kid_from_features``), the same numbers as torchmetrics' FID and, for KID, its estimate with one subset of
every sample (the unbiased MMD^2 of a cubic polynomial kernel, ``(x.y / d + 1)^3``); tests hold them to
torchmetrics.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

N_BOOTSTRAP = 200


def binomial_se(p: float, n: int) -> float:
    """Standard error of a share ``p`` of ``n`` independent judgements (0 for n = 0: nothing to vary)."""
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n > 0 else 0.0


def _draws(n: int, seed: int, n_boot: int) -> np.ndarray:
    """int[n_boot, n]: resampled indices, the same for the same (n, seed)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_se(statistic: Callable[[np.ndarray], float], n: int, seed: int = 0,
                 n_boot: int = N_BOOTSTRAP) -> float:
    """Standard deviation of ``statistic(indices)`` over ``n_boot`` draws of ``n`` indices with replacement.

    ``statistic`` gets int[n] indices into the samples (repeats allowed) and returns the metric on them."""
    if n < 2:
        return 0.0
    values = [statistic(idx) for idx in _draws(n, seed, n_boot)]
    return float(np.std(values, ddof=1))


def mean_and_se(values: Sequence[float], seed: int = 0, n_boot: int = N_BOOTSTRAP) -> tuple[float, float]:
    """Mean of per-sample values and its bootstrap error (about ``sd / sqrt(n)``)."""
    x = np.asarray(values, dtype=np.float64)
    return float(x.mean()), bootstrap_se(lambda idx: float(x[idx].mean()), len(x), seed, n_boot)


# --- FID and KID from features ---------------------------------------------------------------------------
def fid_from_features(real: Tensor, fake: Tensor) -> float:
    """Frechet distance of two float[N, d] feature sets' Gaussians: ``|mu_r - mu_f|^2 + Tr(S_r + S_f -
    2 (S_r S_f)^(1/2))``, the trace of the root from the eigenvalues of ``S_r S_f`` (float64)."""
    real, fake = real.double(), fake.double()
    mu_r, mu_f = real.mean(0), fake.mean(0)
    cov_r, cov_f = torch.cov(real.T), torch.cov(fake.T)
    eig = torch.linalg.eigvals(cov_r @ cov_f)
    root_trace = eig.sqrt().real.sum()
    return float((mu_r - mu_f).square().sum() + cov_r.trace() + cov_f.trace() - 2 * root_trace)


def _poly_kernel(x: Tensor, y: Tensor) -> Tensor:
    return (x @ y.T / x.shape[1] + 1) ** 3


def kid_from_features(real: Tensor, fake: Tensor) -> float:
    """Unbiased MMD^2 between two float[N, d] feature sets under the kernel ``(x.y / d + 1)^3``."""
    real, fake = real.double(), fake.double()
    m, n = len(real), len(fake)
    k_rr, k_ff, k_rf = _poly_kernel(real, real), _poly_kernel(fake, fake), _poly_kernel(real, fake)
    within_r = (k_rr.sum() - k_rr.diagonal().sum()) / (m * (m - 1))
    within_f = (k_ff.sum() - k_ff.diagonal().sum()) / (n * (n - 1))
    return float(within_r + within_f - 2 * k_rf.mean())


def _kid_resampled(k_rr: Tensor, k_ff: Tensor, k_rf: Tensor, c_r: Tensor, c_f: Tensor) -> float:
    """KID on a resample given by counts (how often each sample was drawn) over precomputed kernels. A drawn
    sample's copies are one sample seen twice, not two: the within-set sums leave out pairs of copies (they would
    count as perfect matches), ``sum_{i != j} c_i c_j k_ij / (m^2 - sum c_i^2)``."""
    def within(k: Tensor, c: Tensor) -> Tensor:
        pairs = c.sum() ** 2 - (c * c).sum()
        return (c @ k @ c - (c * c * k.diagonal()).sum()) / pairs

    return float(within(k_rr, c_r) + within(k_ff, c_f) - 2 * (c_r @ k_rf @ c_f) / (c_r.sum() * c_f.sum()))


def distribution_errors(real: Tensor, fake: Tensor, seed: int = 0,
                        n_boot: int = N_BOOTSTRAP) -> dict[str, float]:
    """Bootstrap errors of FID and KID between float[N, d] feature sets, both sets resampled."""
    if min(len(real), len(fake)) < 3:
        return {"fid": 0.0, "kid": 0.0}
    r_draws, f_draws = _draws(len(real), seed, n_boot), _draws(len(fake), seed + 1, n_boot)
    real, fake = real.double(), fake.double()
    kernels = _poly_kernel(real, real), _poly_kernel(fake, fake), _poly_kernel(real, fake)
    fids, kids = [], []
    for ri, fi in zip(r_draws, f_draws):
        fids.append(fid_from_features(real[ri], fake[fi]))
        counts = [torch.bincount(torch.from_numpy(i), minlength=len(x)).double() for i, x in ((ri, real), (fi, fake))]
        kids.append(_kid_resampled(*kernels, *counts))
    return {"fid": float(np.std(fids, ddof=1)), "kid": float(np.std(kids, ddof=1))}
