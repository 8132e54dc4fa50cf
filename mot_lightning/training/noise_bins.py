"""The diffusion loss of validation binned by noise level (Transfusion): ``<stage>/<set>/loss_image_t<k>``.

Bin ``k`` of ``n`` holds the latent positions whose diffusion time, as a fraction of the schedule
(``StepLosses.noise_level``: DDPM step / num_steps, or the flow time), lies in ``[k/n, (k+1)/n)``: ``t0`` is
the least noised, ``t<n-1>`` the most. A bin's loss is the squared error per latent element over its positions,
so the bins averaged with their position counts give back ``<stage>/<set>/loss_image`` (the same sums).
Validation times are spread evenly over the schedule (``Transfusion.times_and_noise``), so the bins hold
nearly equal counts and the same positions in every run.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class NoiseBinLosses(Metric):
    """Sums of the squared error and counts of latent positions per noise bin (synced by all-reduce)."""

    full_state_update = False

    def __init__(self, n_bins: int) -> None:
        super().__init__()
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        self.n_bins = n_bins
        self.add_state("sums", default=torch.zeros(n_bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("counts", default=torch.zeros(n_bins, dtype=torch.float64), dist_reduce_fx="sum")

    def bins(self, noise_level: Tensor) -> Tensor:
        """long[...]: the bin of each noise level in [0, 1)."""
        return (noise_level.float() * self.n_bins).floor().long().clamp(0, self.n_bins - 1)

    def update(self, latent_err: Tensor, noise_level: Tensor, mask: Tensor) -> None:
        """latent_err, noise_level: float[B, T]; mask: bool[B, T] latent positions."""
        b = self.bins(noise_level[mask])
        self.sums += torch.zeros_like(self.sums).index_add_(0, b, latent_err[mask].double())
        self.counts += torch.bincount(b, minlength=self.n_bins).double()

    def compute(self) -> tuple[Tensor, Tensor]:
        """(loss float64[n_bins], NaN in an empty bin; counts float64[n_bins])."""
        return self.sums / self.counts.where(self.counts > 0, float("nan")), self.counts
