"""Diffusion processes and samplers: known schedule values, oracle targets, oracle sampling."""
from __future__ import annotations

import math

import pytest
import torch

from mot_lightning.objectives.diffusion import (
    FlowMatching,
    NoiseSchedule,
    cfg_eps,
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    diffusion_loss,
    fixed_noise,
    flow_sample,
)

SHAPE = (3, 4, 2)  # (B, N latent patches, D)


def _x0(dtype=torch.float64):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=dtype)


def _oracle_eps(schedule: NoiseSchedule, x0):
    """The exact noise: eps = (x_t - sqrt(ab_t) x0) / sqrt(1 - ab_t)."""
    ab = schedule.alphas_cumprod

    def eps_fn(x_t, t):
        a = ab[t].to(x_t.dtype).reshape(-1, *([1] * (x_t.dim() - 1)))
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()
    return eps_fn


# --- schedules ----------------------------------------------------------------------------------
def test_linear_schedule_known_values():
    s = NoiseSchedule(1000, "linear")
    assert s.betas.dtype == s.alphas_cumprod.dtype == torch.float64
    assert s.betas.shape == (1000,)
    assert s.betas[0].item() == pytest.approx(1e-4)
    assert s.betas[-1].item() == pytest.approx(0.02)
    assert s.alphas_cumprod[0].item() == pytest.approx(1 - 1e-4)
    assert s.alphas_cumprod[1].item() == pytest.approx((1 - 1e-4) * (1 - s.betas[1].item()))
    # closed form of the product of (1 - beta) for the DDPM schedule: about 4.0e-5
    assert s.alphas_cumprod[-1].item() == pytest.approx(4.036e-5, rel=1e-2)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_alphas_cumprod_strictly_decreasing(kind):
    ab = NoiseSchedule(1000, kind).alphas_cumprod
    assert (ab[1:] < ab[:-1]).all()
    assert (ab > 0).all() and (ab < 1).all()


def test_cosine_schedule_endpoints_and_clip():
    s = NoiseSchedule(1000, "cosine")
    assert s.alphas_cumprod[0].item() > 0.9999
    assert s.alphas_cumprod[-1].item() < 1e-4
    assert s.betas.max().item() == pytest.approx(0.999)  # the final betas hit the clip
    # ab_t follows f(t)/f(0) before the clip: check the midpoint
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    assert s.alphas_cumprod[499].item() == pytest.approx(f(500 / 1000) / f(0), rel=1e-5)


def test_unknown_kind_raises():
    with pytest.raises(ValueError, match="cosine"):
        NoiseSchedule(10, "sigmoid")


def test_corrupt_hand_computed_and_predict_x0_inverts():
    s = NoiseSchedule(1000, "linear")
    x0, noise = _x0(), torch.randn(SHAPE, dtype=torch.float64)
    t = torch.tensor([0, 10, 999])
    xt = s.corrupt(x0, noise, t)
    for b, tb in enumerate(t.tolist()):
        ab = math.prod(1 - (1e-4 + (0.02 - 1e-4) * i / 999) for i in range(tb + 1))
        expected = math.sqrt(ab) * x0[b] + math.sqrt(1 - ab) * noise[b]
        torch.testing.assert_close(xt[b], expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(s.predict_x0(xt, noise, t), x0, rtol=1e-7, atol=1e-7)
    assert s.target(x0, noise, t) is noise


def test_fixed_t_spreads_over_the_schedule():
    assert NoiseSchedule(7).fixed_t(4).tolist() == [0, 2, 4, 6]


def test_fixed_noise_is_reproducible():
    a = fixed_noise((2, 3), seed=5)
    assert a.equal(fixed_noise((2, 3), seed=5))
    assert not a.equal(fixed_noise((2, 3), seed=6))


# --- losses -------------------------------------------------------------------------------------
def test_loss_zero_for_the_true_target_and_hand_computed_mse():
    s = NoiseSchedule(100)
    x0, noise = _x0(torch.float32), torch.randn(SHAPE)
    t = torch.tensor([0, 50, 99])
    assert diffusion_loss(s.target(x0, noise, t).clone(), noise).item() == 0.0
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    eps = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    assert diffusion_loss(pred, eps).item() == pytest.approx((1 + 4 + 4 + 16) / 4)


def test_masked_loss_means_over_masked_elements_only():
    pred = torch.zeros(2, 3, 2)
    eps = torch.arange(12.0).reshape(2, 3, 2)
    mask = torch.tensor([[True, False, False], [False, True, True]])  # (B, N) latent positions
    expected = (0 + 1 + 8 ** 2 + 9 ** 2 + 10 ** 2 + 11 ** 2) / 6
    assert diffusion_loss(pred, eps, mask).item() == pytest.approx(expected)
    assert diffusion_loss(pred, eps, torch.zeros(2, 3, dtype=torch.bool)).item() == 0.0


def test_flow_matching_corrupt_and_target():
    fm = FlowMatching()
    x0, noise = _x0(), torch.randn(SHAPE, dtype=torch.float64)
    t = torch.tensor([0.0, 0.25, 1.0])
    xt = fm.corrupt(x0, noise, t)
    torch.testing.assert_close(xt[0], x0[0])
    torch.testing.assert_close(xt[1], 0.75 * x0[1] + 0.25 * noise[1])
    torch.testing.assert_close(xt[2], noise[2])
    torch.testing.assert_close(fm.target(x0, noise, t), noise - x0)
    torch.testing.assert_close(fm.fixed_t(4), torch.tensor([0.125, 0.375, 0.625, 0.875]))


# --- samplers -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ddpm_with_oracle_denoiser_returns_x0(kind):
    s, x0 = NoiseSchedule(1000, kind), _x0()
    out = ddpm_sample(_oracle_eps(s, x0), s, SHAPE, torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(out, x0, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("kind,steps,eta", [("linear", 50, 0.0), ("cosine", 50, 0.0), ("linear", 10, 1.0)])
def test_ddim_with_oracle_denoiser_returns_x0(kind, steps, eta):
    s, x0 = NoiseSchedule(1000, kind), _x0()
    out = ddim_sample(_oracle_eps(s, x0), s, SHAPE, steps=steps, eta=eta,
                      generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(out, x0, rtol=1e-8, atol=1e-8)


def test_ddim_eta0_oracle_keeps_one_noise_along_the_path():
    """Deterministic DDIM moves along x_s = sqrt(ab_s) x0 + sqrt(1 - ab_s) eps with one fixed eps,
    so the oracle sees the same noise at every step (fails if the eps-direction term is wrong)."""
    s, x0, seen = NoiseSchedule(1000, "cosine"), _x0(), []
    oracle = _oracle_eps(s, x0)

    def eps_fn(x_t, t):
        seen.append(oracle(x_t, t))
        return seen[-1]
    ddim_sample(eps_fn, s, SHAPE, steps=20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert len(seen) == 20
    for eps in seen[1:]:
        torch.testing.assert_close(eps, seen[0], rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ddpm_posterior_matches_forward_marginals(kind):
    """q(x_{t-1} | x_t, x0) must reproduce q(x_{t-1} | x0) = N(sqrt(ab_{t-1}) x0, 1 - ab_{t-1}):
    mean  c0 + ct sqrt(ab_t) = sqrt(ab_{t-1}),  variance  ct^2 (1 - ab_t) + beta_tilde_t = 1 - ab_{t-1}."""
    s = NoiseSchedule(1000, kind)
    t = torch.arange(1000)
    like = torch.zeros(1000, dtype=torch.float64)
    ones = torch.ones(1000, dtype=torch.float64)
    c0 = s.posterior_mean(ones, like, t)
    ct = s.posterior_mean(like, ones, t)
    ab = s.alphas_cumprod
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    torch.testing.assert_close(c0 + ct * ab.sqrt(), ab_prev.sqrt(), rtol=1e-10, atol=1e-10)
    var = ct ** 2 * (1 - ab) + s.posterior_variance(t, like)
    torch.testing.assert_close(var, 1 - ab_prev, rtol=1e-10, atol=1e-10)
    assert s.posterior_variance(t, like)[0].item() == 0.0


def test_ddim_timesteps_strided():
    seq = ddim_timesteps(1000, 5)
    assert seq == sorted(seq, reverse=True) and seq[0] == 999 and seq[-1] == 0 and len(seq) == 5


def test_flow_sampler_with_oracle_velocity_returns_x0():
    x0 = _x0()

    def v_fn(x_t, t):  # noise from the current point: x_t = (1 - t) x0 + t n  =>  v = n - x0 = (x_t - x0) / t
        return (x_t - x0) / t.reshape(-1, 1, 1)
    out = flow_sample(v_fn, SHAPE, steps=8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(out, x0, rtol=1e-10, atol=1e-10)


def _toy_eps(x_t, t):  # a fixed, non-oracle denoiser
    return 0.5 * x_t + 1e-3 * t.to(x_t.dtype).reshape(-1, 1, 1)


@pytest.mark.parametrize("sample", [
    lambda g: ddpm_sample(_toy_eps, NoiseSchedule(20), SHAPE, g),
    lambda g: ddim_sample(_toy_eps, NoiseSchedule(20), SHAPE, steps=5, eta=1.0, generator=g),
    lambda g: ddim_sample(_toy_eps, NoiseSchedule(20), SHAPE, steps=5, eta=0.0, generator=g),
    lambda g: flow_sample(_toy_eps, SHAPE, steps=5, generator=g),
])
def test_samplers_shape_and_seed_determinism(sample):
    a = sample(torch.Generator().manual_seed(0))
    assert a.shape == SHAPE and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert a.equal(sample(torch.Generator().manual_seed(0)))
    assert not torch.allclose(a, sample(torch.Generator().manual_seed(1)))


# --- guidance ----------------------------------------------------------------------------------
def test_cfg_scales():
    cond, uncond = torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0])
    assert cfg_eps(cond, uncond, 1.0).equal(cond)
    assert cfg_eps(cond, uncond, 0.0).equal(uncond)
    assert cfg_eps(cond, uncond, 3.0).tolist() == [3.0, 7.0]


@pytest.mark.parametrize("sample", ["ddim", "ddpm"])
def test_clip_x0_bounds_the_prediction_and_leaves_an_oracle_alone(sample):
    s = NoiseSchedule(num_steps=60, kind="cosine")
    x0 = _x0()
    def run(fn, **kw):
        g = torch.Generator().manual_seed(0)
        if sample == "ddim":
            return ddim_sample(fn, s, SHAPE, steps=12, generator=g, dtype=torch.float64, **kw)
        return ddpm_sample(fn, s, SHAPE, g, dtype=torch.float64, **kw)

    bound = float(x0.abs().max()) + 0.1
    torch.testing.assert_close(run(_oracle_eps(s, x0), clip_x0=bound), x0)  # the data is inside the bound
    wild = run(lambda x, t: -3.0 * x)  # a bad denoiser: its x0 predictions blow up
    tamed = run(lambda x, t: -3.0 * x, clip_x0=0.5)
    assert float(wild.abs().max()) > 2.0 and float(tamed.abs().max()) <= 0.5 + 1e-9
