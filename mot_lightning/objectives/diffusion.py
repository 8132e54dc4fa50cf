"""Diffusion processes and samplers of the Transfusion setting (``transfusion.py`` trains with them).

Two processes share one API (``fixed_t``, ``corrupt``, ``target``):

* ``NoiseSchedule`` -- DDPM noise prediction over T discrete steps:
  ``x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps``, target ``eps``, with
  ``ab_t = prod_{s<=t} (1 - beta_s)`` (``alphas_cumprod``); betas "linear" (DDPM,
  1e-4..0.02) or "cosine" (Nichol & Dhariwal 2021, betas clipped at 0.999).
* ``FlowMatching`` -- rectified flow: ``x_t = (1 - t) x0 + t noise`` with t in [0, 1],
  target velocity ``noise - x0``.

Samplers take a denoiser ``eps_fn(x_t, t) -> eps_pred`` (or ``v_fn`` for flow
matching) over tensors (B, ...) and timesteps (B,), so they know nothing about the
model; classifier-free guidance mixes two predictions with ``cfg_eps``. Every
sampler draws its noise from an optional ``torch.Generator`` so a seed fixes the
sample.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

import torch
from torch import Tensor

SCHEDULE_KINDS = ("linear", "cosine")
EpsFn = Callable[[Tensor, Tensor], Tensor]  # (x_t (B, ...), t (B,)) -> prediction (B, ...)


def _expand(v: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) so a per-example value broadcasts over ``like``'s trailing dims."""
    return v.reshape(v.shape[0], *([1] * (like.dim() - 1)))


def linear_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """DDPM (Ho et al. 2020): betas evenly spaced in [1e-4, 0.02] (scaled for T=1000). float64[T]."""
    return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)


def cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal 2021: ab(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2);
    beta_t = min(1 - ab(t+1)/ab(t), 0.999). float64[T]."""
    steps = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps  # (T+1,)
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


@dataclass
class NoiseSchedule:
    """DDPM discrete noise schedule, its coefficients in float64.

    ``betas``, ``alphas = 1 - betas``, ``alphas_cumprod = prod alphas`` (ab_t) and
    ``alphas_cumprod_prev`` (ab_{t-1}, with ab_{-1} = 1) are float64[T]; lookups
    (``corrupt``, ``predict_x0``, samplers) gather from them and cast to the input's
    dtype, so a float64 caller gets float64-accurate coefficients.
    """

    num_steps: int = 1000
    kind: str = "linear"
    betas: Tensor = field(init=False, repr=False)
    alphas: Tensor = field(init=False, repr=False)
    alphas_cumprod: Tensor = field(init=False, repr=False)
    alphas_cumprod_prev: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"unknown noise schedule kind {self.kind!r}; use one of {SCHEDULE_KINDS}")
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        betas = linear_betas(self.num_steps) if self.kind == "linear" else cosine_betas(self.num_steps)
        self.betas = betas
        self.alphas = 1 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        # no noise before the first step
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])

    def _at(self, values: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """values[t] in ``like``'s dtype/device, shaped (B, 1, ..., 1)."""
        v = values.to(like.dtype).to(like.device)[t.to(like.device)]
        return _expand(v, like)

    # --- training ---------------------------------------------------------------------------
    def fixed_t(self, batch: int, device: torch.device | None = None) -> Tensor:
        """Validation timesteps evenly spread over [0, T-1] (same every run). long[B]."""
        return torch.linspace(0, self.num_steps - 1, batch, device=device).round().long()

    def corrupt(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) noise; x0, noise (B, ...), t long[B]."""
        ab = self._at(self.alphas_cumprod, t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def predict_x0(self, x_t: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """Invert ``corrupt`` given the noise: x0 = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)."""
        ab = self._at(self.alphas_cumprod, t, x_t)
        return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """The network predicts the noise: target = eps."""
        return noise

    # --- sampling ---------------------------------------------------------------------------
    def posterior_variance(self, t: Tensor, like: Tensor) -> Tensor:
        """beta_tilde_t = beta_t (1 - ab_{t-1}) / (1 - ab_t), zero at t = 0. (B, 1, ..., 1)."""
        ab, ab_prev, beta = (self._at(v, t, like)
                             for v in (self.alphas_cumprod, self.alphas_cumprod_prev, self.betas))
        return beta * (1 - ab_prev) / (1 - ab)

    def posterior_mean(self, x0_hat: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """mu_t = sqrt(ab_{t-1}) beta_t / (1 - ab_t) x0 + sqrt(alpha_t) (1 - ab_{t-1}) / (1 - ab_t) x_t."""
        ab, ab_prev, beta, alpha = (self._at(v, t, x_t)
                                    for v in (self.alphas_cumprod, self.alphas_cumprod_prev, self.betas,
                                              self.alphas))
        return (ab_prev.sqrt() * beta * x0_hat + alpha.sqrt() * (1 - ab_prev) * x_t) / (1 - ab)


@dataclass
class FlowMatching:
    """Rectified flow: x_t = (1 - t) x0 + t noise, t in [0, 1]; target velocity noise - x0."""

    def fixed_t(self, batch: int, device: torch.device | None = None) -> Tensor:
        """Validation times at the bin centres (i + 0.5) / B. float[B]."""
        return (torch.arange(batch, device=device, dtype=torch.float32) + 0.5) / batch

    def corrupt(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = (1 - t) x0 + t noise; t float[B] broadcast over trailing dims."""
        t = _expand(t.to(x0.dtype), x0)
        return (1 - t) * x0 + t * noise

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """dx_t/dt = noise - x0."""
        return noise - x0

def fixed_noise(shape: Sequence[int], seed: int, device: torch.device | None = None,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal noise drawn on CPU from ``seed`` (identical on every device and run),
    so validation losses are comparable across runs."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(tuple(shape), generator=g, dtype=dtype).to(device)


def diffusion_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """mean((pred - target)^2) over all elements, or over masked elements only.

    pred, target: float[B, ...]; mask: bool[B, ...] covering a prefix of pred's dims (e.g.
    (B, N) latent positions for (B, N, D) patches). An all-False mask gives 0, not NaN.
    """
    err = (pred.float() - target.float()) ** 2
    if mask is None:
        return err.mean()
    m = mask.to(err.dtype)
    m = m.reshape(*m.shape, *([1] * (err.dim() - m.dim()))).expand_as(err)
    return (err * m).sum() / m.sum().clamp_min(1.0)


def cfg_eps(eps_cond: Tensor, eps_uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: eps = eps_uncond + scale (eps_cond - eps_uncond)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def _start(shape: Sequence[int], generator: torch.Generator | None, device, dtype) -> Tensor:
    device = device if device is not None else (generator.device if generator is not None else None)
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)


@torch.no_grad()
def ddpm_sample(eps_fn: EpsFn, schedule: NoiseSchedule, shape: Sequence[int],
                generator: torch.Generator | None = None, device: torch.device | None = None,
                dtype: torch.dtype = torch.float32, clip_x0: float | None = None) -> Tensor:
    """Ancestral DDPM sampling over all T steps: x_T ~ N(0, I), then for t = T-1..0
    x_{t-1} = mu_t(x0_hat, x_t) + sqrt(beta_tilde_t) z, x0_hat = predict_x0(x_t, eps_fn(x_t, t)).
    At t = 0 the posterior mean is x0_hat itself and no noise is added. ``clip_x0`` clamps x0_hat to
    [-clip_x0, clip_x0] (DDPM's "clip denoised"; see ``clip_prediction``)."""
    x = _start(shape, generator, device, dtype)  # (B, ...)
    for step in reversed(range(schedule.num_steps)):
        t = torch.full((x.shape[0],), step, dtype=torch.long, device=x.device)
        x0_hat, _ = clip_prediction(schedule, x, eps_fn(x, t), t, clip_x0)
        mean = schedule.posterior_mean(x0_hat, x, t)
        if step == 0:
            return mean
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = mean + schedule.posterior_variance(t, x).sqrt() * z
    return x


def clip_prediction(schedule: NoiseSchedule, x_t: Tensor, eps: Tensor, t: Tensor,
                    clip_x0: float | None) -> tuple[Tensor, Tensor]:
    """(x0_hat, eps) from a noise prediction, with x0_hat clamped to [-clip_x0, clip_x0] and eps made
    consistent with the clamped x0_hat (``None``: no clamping).

    An eps-prediction model divides its error by sqrt(ab_t) when recovering x0; near the end of the
    schedule (cosine: ab_T ~ 1e-5) a small error gives an x0_hat far outside the data, and the sampler
    never recovers. Clamping to the data's range (unit-variance latents: about +-3) removes that.
    """
    x0_hat = schedule.predict_x0(x_t, eps, t)
    if clip_x0 is None:
        return x0_hat, eps
    x0_hat = x0_hat.clamp(-clip_x0, clip_x0)
    ab = schedule._at(schedule.alphas_cumprod, t, x_t)
    return x0_hat, (x_t - ab.sqrt() * x0_hat) / (1 - ab).sqrt()


def ddim_timesteps(num_steps: int, steps: int) -> list[int]:
    """A strided subsequence of [0, T-1], descending, always including T-1 and 0."""
    steps = max(1, min(steps, num_steps))
    return sorted({round(i) for i in torch.linspace(0, num_steps - 1, steps).tolist()}, reverse=True)


@torch.no_grad()
def ddim_sample(eps_fn: EpsFn, schedule: NoiseSchedule, shape: Sequence[int], steps: int = 50,
                eta: float = 0.0, generator: torch.Generator | None = None,
                device: torch.device | None = None, dtype: torch.dtype = torch.float32,
                clip_x0: float | None = None) -> Tensor:
    """DDIM (Song et al. 2021) over a strided subsequence t -> s (s = next smaller step, ab_{-1} = 1):
    x_s = sqrt(ab_s) x0_hat + sqrt(1 - ab_s - sigma^2) eps + sigma z,
    sigma = eta sqrt((1 - ab_s) / (1 - ab_t)) sqrt(1 - ab_t / ab_s); eta = 0 is deterministic.
    ``clip_x0``: see ``clip_prediction``."""
    x = _start(shape, generator, device, dtype)  # (B, ...)
    seq = ddim_timesteps(schedule.num_steps, steps)
    ab_all = schedule.alphas_cumprod
    for i, step in enumerate(seq):
        t = torch.full((x.shape[0],), step, dtype=torch.long, device=x.device)
        x0_hat, eps = clip_prediction(schedule, x, eps_fn(x, t), t, clip_x0)
        ab_t = float(ab_all[step])
        ab_s = float(ab_all[seq[i + 1]]) if i + 1 < len(seq) else 1.0
        sigma = eta * math.sqrt((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s))
        x = math.sqrt(ab_s) * x0_hat + math.sqrt(max(1 - ab_s - sigma ** 2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x


@torch.no_grad()
def flow_sample(v_fn: EpsFn, shape: Sequence[int], steps: int = 50,
                generator: torch.Generator | None = None, device: torch.device | None = None,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """Euler integration of dx/dt = v(x, t) from t = 1 (pure noise) to t = 0 (data), t float[B]."""
    x = _start(shape, generator, device, dtype)  # (B, ...)
    times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
    for t_now, t_next in pairwise(times):
        t = torch.full((x.shape[0],), t_now, dtype=x.dtype, device=x.device)
        x = x + (t_next - t_now) * v_fn(x, t)
    return x
