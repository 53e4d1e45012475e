"""The official KLIP preset on priors without DDPM timesteps (the shipped EDM priors): diffusers' default linear-β
grid mapped to VE, kept inside the prior's σ range, with the official weight sqrt(β_t/ᾱ_t) at each step.

Closed forms in float64: ``ᾱ_t = Π_{s≤t}(1 − β_s)``, β linear from 1e-4 to 0.02 over 1000 steps, ``σ_t = sqrt((1−ᾱ_t)/ᾱ_t)``,
leading spacing ``t = (1000 // n)·[n−1, …, 0]``."""

import math

import pytest
import torch
from torch import nn

from priorshift.detectors import KLIP
from priorshift.diffusion import EDMDenoiser
from priorshift.diffusion.schedules import ddpm_step_weights, linear_beta_sigmas
from priorshift.operators import GaussianBlur
from priorshift.samplers import SamplingPlan

BETAS = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
ABAR = torch.cumprod(1 - BETAS, 0)
SIGMA = ((1 - ABAR) / ABAR).sqrt()


class _Net(nn.Module):
    """A small fixed network F(x_in, c_noise) for an EDM prior (no training: only the recipe is under test)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.linspace(-0.3, 0.5, 9).reshape(1, 1, 3, 3))
            self.conv.bias.fill_(0.05)

    def forward(self, x, c_noise):
        return torch.tanh(self.conv(x)) * (1 + 0.1 * c_noise.reshape(-1, 1, 1, 1))


class _Range:
    """A prior with only a noise range (the DDPM schedule reads nothing else)."""

    def __init__(self, lo, hi):
        self.sigma_min, self.sigma_max = lo, hi


def edm_prior():
    return EDMDenoiser(_Net(), sigma_data=0.5, sigma_min=0.002, sigma_max=80.0, image_size=8, channels=1)


def leading(n):
    return torch.arange(n - 1, -1, -1) * (1000 // n)


def test_linear_grid_is_diffusers_default_schedule():
    assert torch.equal(linear_beta_sigmas(), SIGMA)  # the same float64 operations
    assert linear_beta_sigmas()[0] == pytest.approx(math.sqrt(1e-4 / (1 - 1e-4)), rel=1e-12)
    diffusers = pytest.importorskip("diffusers")
    # diffusers computes ᾱ in float32: measured 3.6e-7 relative from the float64 product over all 1000 steps (a few
    # float32 ulps, compounded); σ inherits it amplified by ᾱ/(1 − ᾱ) where 1 − ᾱ is small (8.3e-5 at t = 0).
    ac = diffusers.DDPMScheduler().alphas_cumprod.double()
    assert torch.allclose(ac, ABAR, rtol=1e-6, atol=0)
    assert torch.allclose(((1 - ac) / ac).sqrt(), SIGMA, rtol=2e-4, atol=0)
    with pytest.raises(ValueError, match="beta_start"):
        linear_beta_sigmas(0.02, 1e-4)


@pytest.mark.parametrize("n", [10, 20, 50, 100])
def test_ddpm_schedule_on_an_edm_prior(n):
    sig = SamplingPlan("dps", steps=n, schedule="ddpm").sigmas(edm_prior())
    t = leading(n)
    inside = SIGMA[t] <= 80.0
    # Steps inside the prior's range are the DDPM timesteps themselves; the few above σ_max = 80 (none at 10 steps,
    # 1 at 20, 3 at 50, 7 at 100) take the largest in-range timesteps, 929 (σ 79.5), 928, ... one apart.
    assert int((~inside).sum()) == {10: 0, 20: 1, 50: 3, 100: 7}[n]
    expected_t = torch.where(inside, t, 929 - torch.arange(n))
    assert torch.equal(sig, torch.cat([SIGMA[expected_t], torch.zeros(1, dtype=torch.float64)]))
    assert bool((sig[1:] < sig[:-1]).all()) and float(sig[0]) <= 80.0
    # The official weight of each step: sqrt(β_t / ᾱ_t) of its timestep.
    assert torch.allclose(ddpm_step_weights(edm_prior(), sig), (BETAS[expected_t] / ABAR[expected_t]).sqrt(), rtol=1e-9)


def test_ddpm_schedule_keeps_the_low_end_inside_the_range_too():
    # σ_min = 0.05 lies above σ_10 = 0.047: the last step (t = 0 at 20 steps) moves up to the smallest in-range timestep.
    t_lo = int((SIGMA >= 0.05).nonzero()[0])
    sig = SamplingPlan("dps", steps=20, schedule="ddpm").sigmas(_Range(0.05, 80.0))
    assert float(sig[-2]) == float(SIGMA[t_lo]) and float(sig[-3]) == float(SIGMA[50])
    with pytest.raises(ValueError, match="fewer than steps=20"):
        SamplingPlan("dps", steps=20, schedule="ddpm").sigmas(_Range(1.0, 1.05))


def test_official_preset_runs_on_an_edm_prior_with_the_official_weight():
    prior, op = edm_prior(), GaussianBlur(kernel_size=3, sigma=1.0, noise_std=0.02)
    x = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
    y = op(x, seed=[3])
    det = KLIP.official(prior, op, steps=20, samples=2, keep_step_maps=True)
    updates, first = [], []
    hooks = [lambda s: updates.append(s.likelihood_update[0].clone()), lambda s: first.append(s.x[0].clone()) if s.i == 0 else None]
    scores = det.score(y, seed=[0], hooks=hooks)
    k0, k1 = det.window_steps
    assert (k0, k1) == (13, 17) and len(updates) == k1 and scores.map.shape == (1, 8, 8)
    t = torch.where(leading(20) == 950, 929, leading(20))
    w = (BETAS[t] / ABAR[t]).sqrt()
    # Every per-step map is the mean over samples of (Δx_l / sqrt(β_t/ᾱ_t))² per pixel (block 1): the weight used is the
    # closed form, not g = sqrt(σ_k + σ_{k+1}) (which differs from it by factors of 0.3 to 3 on this grid).
    for k, u in enumerate(updates):
        expected = (u.double() / w[k]).pow(2).sum(1).mean(0)  # (S, C, H, W) -> (H, W)
        assert torch.allclose(scores.extras["step_maps"][0, k].double(), expected, rtol=1e-5), f"step {k}"
    assert torch.allclose(scores.map[0], scores.extras["step_maps"][0, k0:k1].double().mean(0), rtol=1e-6)
    # x_T is N(0, I) in VP coordinates: sqrt(1 + σ_0²)·n, σ_0 = σ_929; its spread is that, not σ_0.
    assert float(first[0].std()) == pytest.approx(math.sqrt(1 + float(SIGMA[929]) ** 2), rel=0.2)
    g = torch.tensor([math.sqrt(float(SIGMA[a] + SIGMA[b])) for a, b in zip(t[:-1], t[1:])])
    assert float((w[:-1] / g).max() / (w[:-1] / g).min()) > 3
