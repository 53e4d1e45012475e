"""Diffusion core: schedules, EDM preconditioning, the VP/diffusers adapter, NFE counting, the UNet."""

import math

import pytest
import torch

from priorshift.diffusion import (
    CountingDenoiser,
    EDMDenoiser,
    UNet,
    UNetConfig,
    VPDenoiser,
    ddpm_sigmas,
    karras_sigmas,
    score,
    score_from_denoised,
    sigmas_from_alphas_cumprod,
    ve_sigmas,
    vp_sigmas,
)


def test_karras_schedule_matches_formula():
    s = karras_sigmas(10, 0.002, 80.0, rho=7)
    assert s.dtype == torch.float64 and s.shape == (11,)
    assert s[-1] == 0 and math.isclose(s[0], 80.0) and math.isclose(s[-2], 0.002)
    i = torch.arange(10, dtype=torch.float64)
    ref = (80 ** (1 / 7) + i / 9 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert torch.allclose(s[:-1], ref, rtol=1e-12)
    assert bool((s[1:] < s[:-1]).all())


def test_ve_and_vp_schedules():
    s = ve_sigmas(5, 0.01, 50.0)
    assert torch.allclose(s[:-1].log().diff(), s[:-1].log().diff()[0].expand(4))  # geometric
    v = vp_sigmas(1000)
    assert v[-1] == 0 and bool((v[1:] < v[:-1]).all())
    # σ at t = 1: sqrt(exp(½(β_max - β_min) + β_min) - 1)
    assert math.isclose(float(v[0]), math.sqrt(math.expm1(0.5 * 19.9 + 0.1)), rel_tol=1e-12)


def test_ddpm_leading_spacing_visits_diffusers_timesteps():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    ac = torch.cumprod(1 - betas, 0)
    sig, steps = ddpm_sigmas(ac, 100)
    assert steps[:3].tolist() == [990, 980, 970] and steps[-1] == 0
    assert torch.allclose(sig[:-1], sigmas_from_alphas_cumprod(ac)[steps])
    # Values quoted in the EigenScore dossier: σ_100 ≈ 0.342, σ_300 ≈ 1.240.
    all_sig = sigmas_from_alphas_cumprod(ac)
    assert abs(float(all_sig[100]) - 0.342) < 2e-3 and abs(float(all_sig[300]) - 1.240) < 2e-3


@pytest.mark.parametrize("bad", [dict(n=0), dict(n=5, sigma_min=0.0), dict(n=5, sigma_min=2.0, sigma_max=1.0)])
def test_schedule_errors(bad):
    kw = dict(n=5, sigma_min=0.002, sigma_max=80.0) | bad
    with pytest.raises(ValueError):
        karras_sigmas(**kw)


class _ZeroNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, c_noise):
        return torch.zeros_like(x) + self.w


def test_edm_preconditioning_formula_and_dtypes():
    D = EDMDenoiser(_ZeroNet(), sigma_data=0.5)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    sigma = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    out = D(x, sigma)
    assert out.dtype == torch.float64
    c_skip = 0.25 / (sigma**2 + 0.25)
    assert torch.allclose(out, c_skip.reshape(-1, 1, 1, 1) * x, atol=1e-6)
    assert torch.allclose(score(D, x, sigma), (out - x) / sigma.reshape(-1, 1, 1, 1) ** 2)


def test_edm_data_range_adapter():
    # A network trained on [0, 1] sees x_m = (x + 1)/2 and σ_m = σ/2; the output is mapped back.
    D = EDMDenoiser(_ZeroNet(), sigma_data=0.5, data_range=(0.0, 1.0))
    x = torch.zeros(1, 1, 4, 4)
    out = D(x, torch.tensor([1.0]))
    c_skip = 0.25 / (0.25 + 0.25)
    assert torch.allclose(out, torch.full_like(x, (c_skip * 0.5 - 0.5) / 0.5))


def test_edm_rejects_bad_input():
    D = EDMDenoiser(_ZeroNet(), image_size=8, channels=1)
    with pytest.raises(ValueError, match="trained on 8×8"):
        D(torch.zeros(1, 1, 16, 16), torch.ones(1))
    with pytest.raises(ValueError, match="NaN"):
        D(torch.full((1, 1, 8, 8), float("nan")), torch.ones(1))
    with pytest.raises(ValueError, match="shape"):
        D(torch.zeros(2, 1, 8, 8), torch.ones(3))


def test_counting_denoiser_counts_rows(gauss8):
    D = CountingDenoiser(gauss8)
    x = torch.zeros(5, 1, 8, 8, dtype=torch.float64)
    D(x, torch.ones(5, dtype=torch.float64))
    D(x[:2], torch.ones(2, dtype=torch.float64))
    assert (D.nfe, D.calls) == (7, 2)
    assert D.shape == gauss8.shape  # attributes pass through


def test_score_from_denoised_is_tweedie_without_a_network_call(gauss8):
    D = CountingDenoiser(gauss8)
    x = gauss8.sample(3, torch.Generator().manual_seed(0)) + 0.7 * torch.randn(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.7, 0.7, 0.7], dtype=torch.float64)
    s = score(D, x, sigma)
    assert D.nfe == 3
    x0 = gauss8(x, sigma)
    assert torch.equal(score_from_denoised(x0, x, sigma), s)
    assert torch.equal(score_from_denoised(x0, x, 0.7), (x0 - x) / 0.7**2)  # one float σ for the whole batch
    assert D.nfe == 3
    # Tweedie for N(μ, Σ): ∇ log p_σ(x) = -(Σ + σ² I)⁻¹ (x − μ).
    cov = gauss8.cov + 0.49 * torch.eye(64, dtype=torch.float64)
    expected = -torch.linalg.solve(cov, (x.reshape(3, -1) - gauss8.mean.reshape(1, -1)).T).T
    torch.testing.assert_close(s.reshape(3, -1), expected)


def _analytic_eps_model(prior, alphas_cumprod, timestep):
    """An ε-prediction VP model that is exact for a Gaussian prior: ε = (x - D(x, σ_t)) / σ_t in VE coordinates."""
    sig = sigmas_from_alphas_cumprod(alphas_cumprod)

    def sigma_of(t):
        if not t.is_floating_point():
            return sig[t]
        lo = t.floor().long().clamp(0, len(sig) - 2)
        w = t - lo
        return torch.exp((1 - w) * sig[lo].log() + w * sig[lo + 1].log())  # log-σ interpolation

    def model(x_t, t):
        s = sigma_of(t.to(torch.float64) if t.is_floating_point() else t).to(x_t.dtype)
        x = x_t * torch.sqrt(1 + s**2).reshape(-1, 1, 1, 1)
        return (x - prior(x, s)) / s.reshape(-1, 1, 1, 1)

    return model


@pytest.mark.parametrize("timestep", ["nearest", "interpolate"])
def test_vp_adapter_equals_gaussian_denoiser(gauss8, timestep):
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    ac = torch.cumprod(1 - betas, 0)
    D = VPDenoiser(_analytic_eps_model(gauss8, ac, timestep), ac, timestep=timestep)
    sig_grid = sigmas_from_alphas_cumprod(ac)
    sigma = sig_grid[[10, 250, 600, 999]] if timestep == "nearest" else torch.tensor([0.05, 0.7, 3.3, 40.0], dtype=torch.float64)
    x = gauss8.sample(4, torch.Generator().manual_seed(1)) + sigma.reshape(-1, 1, 1, 1) * torch.randn(4, 1, 8, 8, dtype=torch.float64)
    assert torch.allclose(D(x, sigma), gauss8(x, sigma), atol=1e-9)


def test_vp_adapter_prediction_types(gauss8):
    ac = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    eps_model = _analytic_eps_model(gauss8, ac, "nearest")
    sig = sigmas_from_alphas_cumprod(ac)

    def v_model(x_t, t):
        s = sig[t].reshape(-1, 1, 1, 1)
        eps = eps_model(x_t, t)
        x = x_t * torch.sqrt(1 + s**2)
        x0 = x - s * eps
        a, b = 1 / torch.sqrt(1 + s**2), s / torch.sqrt(1 + s**2)  # sqrt(ᾱ), sqrt(1-ᾱ)
        return a * eps - b * x0

    D = VPDenoiser(v_model, ac, prediction_type="v_prediction", timestep="nearest")
    sigma = sig[[50, 500]]
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    assert torch.allclose(D(x, sigma), gauss8(x, sigma), atol=1e-9)
    with pytest.raises(ValueError, match="prediction_type"):
        VPDenoiser(v_model, ac, prediction_type="x0")


def test_diffusers_unet_adapter():
    diffusers = pytest.importorskip("diffusers")
    from priorshift.diffusion import from_diffusers

    torch.manual_seed(0)  # the network's init and x: unseeded, about one draw in six exceeded the float32 tolerance
    unet = diffusers.UNet2DModel(
        sample_size=16, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    ).eval()
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000)
    D = from_diffusers(unet, sched, timestep="nearest")
    sig, steps = ddpm_sigmas(sched.alphas_cumprod, 10)
    x = torch.randn(2, 1, 16, 16)
    sigma = sig[[0, 5]].float()
    with torch.no_grad():
        out = D(x, sigma)
        t = steps[[0, 5]]
        ref = x - sigma.reshape(-1, 1, 1, 1) * unet(x / torch.sqrt(1 + sigma**2).reshape(-1, 1, 1, 1), t).sample
    assert out.shape == x.shape and torch.allclose(out, ref, rtol=1e-5, atol=1e-4)
    with torch.no_grad():  # fractional timesteps go through the sinusoidal embedding
        assert torch.isfinite(from_diffusers(unet, sched)(x, torch.tensor([0.3, 2.0]))).all()


@pytest.mark.parametrize("attention", [True, False])
def test_unet_shapes_and_size(attention):
    cfg = UNetConfig(image_size=16, widths=(8, 16, 32), attention=attention, embedding_dim=32)
    net = UNet(cfg)
    out = net(torch.randn(3, 1, 16, 16), torch.randn(3))
    assert out.shape == (3, 1, 16, 16)
    assert torch.all(out == 0)  # zero-initialized head: D starts as c_skip·x
    with pytest.raises(ValueError, match="divisible"):
        UNet(UNetConfig(image_size=18, widths=(8, 16, 32)))
    with pytest.raises(ValueError, match="unknown UNet config"):
        UNetConfig.from_dict({"image_size": 16, "depth": 3})


def test_unet_is_row_independent():
    net = UNet(UNetConfig(image_size=16, widths=(8, 16), embedding_dim=32))
    for p in net.parameters():  # leave the zero init so the output depends on the input
        torch.nn.init.normal_(p, std=0.05)
    x, c = torch.randn(4, 1, 16, 16), torch.randn(4)
    with torch.no_grad():
        assert torch.allclose(net(x, c)[2:3], net(x[2:3], c[2:3]), atol=1e-5)
