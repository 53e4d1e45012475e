"""Samplers against exact posteriors, and the sampler contract over the registries."""

import math

import pytest
import torch

from priorshift.diffusion import CountingDenoiser, karras_sigmas
from priorshift.operators import Identity, Inpainting, ParallelBeamCT, random_pixel_mask
from priorshift.registry import get, names
from priorshift.analytic import GaussianPrior
from priorshift.samplers import TraceRecorder, sample_dps, sample_exact, sample_pigdm, sample_projection, sample_unconditional

# Monte-Carlo tolerances for n i.i.d. samples (d = 256 dimensions):
# * mean: each coordinate's z-score (m̂ − m)/(sd/√n) is N(0, 1); P(max over 256 > 5) ≤ 256·5.7e-7 ≈ 1.5e-4;
# * covariance: along a fixed unit vector v, vᵀĈv / vᵀΣv ~ χ²_{n−1}/(n−1), sd √(2/(n−1)); we check the 10
#   leading eigen-directions (where errors would matter) and the total variance, at 5 sd.
N_SAMPLES = 3000
Z = 5.0


def _check_moments(xs, mean, cov):
    n = xs.shape[0]
    xs = xs.reshape(n, -1)
    sd = cov.diagonal().sqrt()
    z = (xs.mean(0) - mean.reshape(-1)) / (sd / math.sqrt(n))
    assert z.abs().max() < Z, f"mean off by {z.abs().max():.2f} standard errors"
    lam, V = torch.linalg.eigh(cov)
    C = torch.cov(xs.T)
    top = V[:, -10:]
    ratio = (top.T @ C @ top).diagonal() / lam[-10:]
    tol = Z * math.sqrt(2 / (n - 1))
    assert (ratio - 1).abs().max() < tol, f"variance ratios {ratio.min():.3f}..{ratio.max():.3f}, tolerance ±{tol:.3f}"
    assert abs(float(C.trace() / cov.trace()) - 1) < tol


@pytest.fixture
def problem(gauss16):
    x = gauss16.sample(1, torch.Generator().manual_seed(0))
    mask = random_pixel_mask(16, 0.5, generator=torch.Generator().manual_seed(1)).double()
    op = Inpainting(mask=mask, noise_std=0.1)
    return gauss16, op, op(x, seed=[3])


def test_exact_guidance_matches_closed_form_posterior(problem):
    prior, op, y = problem
    mean, cov = prior.posterior(op, y)
    res = sample_exact(prior, op, y, karras_sigmas(40, 0.002, 80.0), samples=N_SAMPLES, seed=[0], method="heun")
    assert res.x0.shape == (1, N_SAMPLES, 1, 16, 16)
    _check_moments(res.x0[0], mean[0], cov)


def test_unconditional_matches_prior(gauss16):
    y = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    res = sample_unconditional(gauss16, Identity(), y, karras_sigmas(40, 0.002, 80.0), samples=N_SAMPLES, seed=[0])
    _check_moments(res.x0[0], gauss16.mean[0], gauss16.cov)


def test_ancestral_exact_sampler_converges(problem):
    # First-order in the step size: the error of the posterior variance shrinks as steps grow.
    prior, op, y = problem
    _, cov = prior.posterior(op, y)
    errs = []
    for steps in (10, 40):
        xs = sample_exact(prior, op, y, karras_sigmas(steps, 0.002, 80.0), samples=2000, seed=[0]).x0[0].reshape(2000, -1)
        errs.append(abs(float(torch.cov(xs.T).trace() / cov.trace()) - 1))
    assert errs[1] < errs[0]


# DPS and projection are approximations: DPS plugs the denoised estimate into the likelihood
# (p(y | x_σ) ≈ N(y; A D(x_σ, σ), ·)), ignoring Cov[x0 | x_σ]; the projection sampler enforces consistency
# with a forward-diffused y. On this smooth Gaussian prior both land near the exact posterior mean. Measured
# (100 steps, 64 samples × 4 images; posterior-mean RMSE relative to the prior-mean RMSE): DPS without
# Jacobian 0.08, DPS with Jacobian 0.06, projection 0.15 (inpainting) and 0.05 (CT). Bounds: twice that.
@pytest.mark.slow
@pytest.mark.parametrize(
    "sampler, op_name, params, bound",
    [
        (sample_dps, "inpainting", dict(jacobian=False, zeta=0.3), 0.2),
        (sample_dps, "inpainting", dict(jacobian=True, zeta=1.0), 0.2),
        (sample_projection, "inpainting", dict(), 0.3),
        (sample_projection, "ct", dict(corrector=False), 0.15),
    ],
)
def test_approximate_samplers_land_near_posterior_mean(gauss16, sampler, op_name, params, bound):
    x = gauss16.sample(4, torch.Generator().manual_seed(0))
    if op_name == "inpainting":
        op = Inpainting(mask=random_pixel_mask(16, 0.5, generator=torch.Generator().manual_seed(1)).double(), noise_std=0.05)
    else:
        op = ParallelBeamCT(image_size=16, n_views=8, noise_std=0.05)
    y = op(x, seed=[1, 2, 3, 4])
    mean, _ = gauss16.posterior(op, y)
    res = sampler(gauss16, op, y, karras_sigmas(100, 0.002, 80.0), samples=64, seed=[0, 1, 2, 3], **params)
    err = (res.x0.mean(1) - mean).pow(2).mean().sqrt()
    prior_err = (gauss16.mean[0].reshape(1, 1, 16, 16) - mean).pow(2).mean().sqrt()
    assert err / prior_err < bound, f"relative error {float(err / prior_err):.3f}"


@pytest.mark.parametrize("op_name", ["inpainting", "ct"])
@pytest.mark.parametrize("jacobian", [False, True])
def test_pigdm_is_exact_on_an_isotropic_gaussian(op_name, jacobian):
    # For N(μ, σ_d² I), p_σ(y | x) = N(y; A D(x, σ), σ_y² I + r_σ² A Aᵀ) exactly and ∂D/∂x = (r_σ²/σ²) I, so ΠGDM's
    # step is the exact likelihood step: with the same seeds, every update and every sample equals sample_exact's.
    prior = GaussianPrior(0.1, 0.25 * torch.eye(64, dtype=torch.float64), (1, 8, 8))
    if op_name == "inpainting":
        op = Inpainting(mask=random_pixel_mask(8, 0.5, generator=torch.Generator().manual_seed(0)).double(), noise_std=0.1)
    else:
        op = ParallelBeamCT(image_size=8, n_views=4, noise_std=0.2)
    y = op(prior.sample(2, torch.Generator().manual_seed(1)), seed=[1, 2])
    runs = {}
    for name, fn, kw in (("exact", sample_exact, {}), ("pigdm", sample_pigdm, {"damping": 0.0, "jacobian": jacobian})):
        updates = []
        res = fn(prior, op, y, karras_sigmas(20, 0.002, 80.0), samples=3, seed=[0, 1], hooks=[lambda s: updates.append(s.likelihood_update.clone())], **kw)
        runs[name] = torch.stack(updates), res.x0
    assert runs["exact"][0].abs().max() > 0.1
    torch.testing.assert_close(runs["pigdm"][0], runs["exact"][0], rtol=0, atol=1e-12)
    torch.testing.assert_close(runs["pigdm"][1], runs["exact"][1], rtol=0, atol=1e-12)


def test_pigdm_step_grows_with_the_disagreement(gauss8):
    # Unlike normalised DPS (fixed length ζ per step), ΠGDM's measurement displacement scales with y − A x̂0.
    op = Inpainting(mask=random_pixel_mask(8, 0.5, generator=torch.Generator().manual_seed(0)).double(), noise_std=0.1)
    y = op(gauss8.sample(3, torch.Generator().manual_seed(1)), seed=[1, 2, 3])

    def energy(sampler, yy, **kw):
        total = []
        sampler(gauss8, op, yy, karras_sigmas(15, 0.002, 80.0), seed=[0, 1, 2], hooks=[lambda s: total.append(s.likelihood_update.pow(2).sum())], **kw)
        return float(sum(total))

    assert energy(sample_pigdm, 10 * y) > 20 * energy(sample_pigdm, y)
    assert energy(sample_dps, 10 * y, jacobian=False) < 2 * energy(sample_dps, y, jacobian=False)
    with pytest.raises(ValueError, match="sigma_data"):
        sample_pigdm(lambda x, s: x, op, y, karras_sigmas(5, 0.002, 80.0))


@pytest.mark.parametrize("op_name", ["ct", "blur"])
def test_spectral_pinv_equals_dense_solve_and_cg(op_name):
    # A⁺_ε r = Aᵀ (A Aᵀ + ε I)⁻¹ r from one eigendecomposition, vs a dense solve and vs converged CG.
    from priorshift.analytic import operator_matrix
    from priorshift.samplers.projection import SpectralPinv

    op = get("operator", op_name).example(image_size=8, channels=1, noise_std=0.1)
    r = op.A(torch.randn(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    sp = SpectralPinv(op, tuple(r.shape[1:]))
    A = operator_matrix(op, (1, 8, 8)).double()
    for eps in (1e-3, 0.1, 1.0):
        dense = torch.linalg.solve(A @ A.T + eps * torch.eye(A.shape[0], dtype=torch.float64), r.reshape(3, -1).T)
        expected = (A.T @ dense).T.reshape(3, 1, 8, 8)
        got = sp(op, r, eps)
        assert torch.allclose(got, expected, atol=1e-10 * expected.abs().max()), f"ε = {eps}"
        assert torch.allclose(op.pinv_damped(r, eps, n_iter=200), got, atol=1e-6 * got.abs().max())
    # ε = 0: the Moore–Penrose pseudo-inverse (A Aᵀ may be singular: detector bins no ray reaches).
    assert torch.allclose(sp(op, r, 0.0), (torch.linalg.pinv(A) @ r.reshape(3, -1).T).T.reshape(3, 1, 8, 8), atol=1e-8)


def test_projection_reuses_spectral_factorization():
    from priorshift.samplers import projection

    op = ParallelBeamCT(image_size=8, n_views=4, noise_std=0.1)
    y = op(torch.zeros(1, 1, 8, 8, dtype=torch.float64), seed=0)
    D = lambda x, s: 0.5 * x  # noqa: E731 — any denoiser; only the factorization cache is under test
    sig = karras_sigmas(3, 0.01, 1.0)
    sample_projection(D, op, y, sig, seed=0)
    first = projection._SPECTRAL_CACHE[op]
    sample_projection(D, op, y, sig, seed=0)
    assert projection._SPECTRAL_CACHE[op] is first


# ---------------------------------------------------------------- the contract, over every sampler × operator

SAMPLER_PARAMS = {"langevin": {"inner": 2}}


def _tiny(gauss8, op_name, n_images=2):
    op = get("operator", op_name).example(image_size=8, channels=1, noise_std=0.1)
    x = gauss8.sample(n_images, torch.Generator().manual_seed(0))
    return op, op(x, seed=list(range(100, 100 + n_images)))


@pytest.mark.parametrize("sampler_name", names("sampler"))
@pytest.mark.parametrize("op_name", names("operator"))
def test_sampler_contract(gauss8, sampler_name, op_name):
    sampler = get("sampler", sampler_name)
    op, y = _tiny(gauss8, op_name)
    sigmas = karras_sigmas(5, 0.01, 20.0)
    calls = []
    D = CountingDenoiser(gauss8)
    res = sampler(D, op, y, sigmas, samples=3, seed=[7, 8], hooks=[calls.append], **SAMPLER_PARAMS.get(sampler_name, {}))
    assert res.x0.shape == (2, 3, 1, 8, 8) and res.x0.dtype == torch.float64
    assert torch.isfinite(res.x0).all()
    assert [s.i for s in calls] == list(range(5)), "each hook is called exactly once per step, in order"
    assert res.nfe == D.nfe and res.nfe > 0, "the NFE reported is the counting wrapper's"
    s = calls[2]
    assert s.x.shape == (2, 3, 1, 8, 8) and s.likelihood_update.shape == s.x.shape
    assert math.isclose(s.g**2 * s.dt, s.sigma**2 - s.sigma_next**2, rel_tol=1e-12)
    # The step contract: x_next = x + prior_update + likelihood_update.
    assert torch.allclose(calls[3].x, s.x + s.prior_update + s.likelihood_update, atol=1e-10)


@pytest.mark.parametrize("sampler_name", names("sampler"))
def test_seeds_batch_independence_and_early_stop(gauss8, sampler_name):
    sampler = get("sampler", sampler_name)
    params = SAMPLER_PARAMS.get(sampler_name, {})
    op, y = _tiny(gauss8, "inpainting", n_images=8)
    sigmas = karras_sigmas(6, 0.01, 20.0)
    seeds = list(range(20, 28))
    a = sampler(gauss8, op, y, sigmas, samples=2, seed=seeds, **params)
    b = sampler(gauss8, op, y, sigmas, samples=2, seed=seeds, **params)
    assert torch.equal(a.x0, b.x0), "same seeds → same samples"
    alone = sampler(gauss8, op, y[5:6], sigmas, samples=2, seed=seeds[5:6], **params)
    assert torch.allclose(alone.x0[0], a.x0[5], atol=1e-12), "an image's samples do not depend on the rest of the batch"
    assert not torch.allclose(a.x0[0, 0], a.x0[0, 1]), "the S samples of one image are different draws"
    D = CountingDenoiser(gauss8)
    full_nfe = sampler(D, op, y, sigmas, samples=2, seed=seeds, **params).nfe
    steps = []
    D.reset()
    early = sampler(D, op, y, sigmas, samples=2, seed=seeds, hooks=[steps.append], stop_after=2, **params)
    assert len(steps) == 2 and early.steps_run == 2 and early.nfe == D.nfe
    assert early.nfe < full_nfe


def test_trace_recorder_reduces_to_blocks(gauss8):
    op, y = _tiny(gauss8, "inpainting")
    rec = TraceRecorder(("likelihood_update", "sigma"), block=4)
    sample_dps(gauss8, op, y, karras_sigmas(4, 0.01, 20.0), samples=2, seed=[0, 1], hooks=[rec])
    assert rec["likelihood_update"].shape == (4, 2, 2, 2, 2) and rec["sigma"].shape == (4,)


def test_sampler_bad_input(gauss8):
    op, y = _tiny(gauss8, "inpainting")
    sigmas = karras_sigmas(4, 0.01, 20.0)
    with pytest.raises(ValueError, match="samples"):
        sample_dps(gauss8, op, y, sigmas, samples=0)
    with pytest.raises(ValueError, match="NaN"):
        sample_dps(gauss8, op, torch.full_like(y, float("nan")), sigmas)
    with pytest.raises(ValueError, match="decreasing"):
        sample_dps(gauss8, op, y, sigmas.flip(0))
    with pytest.raises(ValueError, match="stop_after"):
        sample_dps(gauss8, op, y, sigmas, stop_after=9)
    with pytest.raises(ValueError, match="seeds"):
        sample_dps(gauss8, op, y, sigmas, seed=[1, 2, 3])
    with pytest.raises(ValueError, match="posterior denoiser"):
        sample_exact(lambda x, s: x, op, y, sigmas)


def test_dps_official_options(gauss8):
    # The official KLIP DDPM backend's DPS details (sample_dps docstring), checked on their closed forms at step 0.
    op, y = _tiny(gauss8, "inpainting")
    sigmas = karras_sigmas(4, 0.01, 20.0)

    def first_step(**params):
        states = []
        sample_dps(gauss8, op, y, sigmas, samples=3, seed=[5, 6], hooks=[states.append], jacobian=False, **params)
        return states[0]

    own, shared = first_step(), first_step(residual_norm="sample_mean")
    r_norm = (y[:, None] - op.A(own.x0_hat.flatten(0, 1)).reshape(own.x0_hat.shape)).flatten(2).norm(dim=2)  # (B, S) ‖r_s‖
    ratio = shared.likelihood_update.flatten(2).norm(dim=2) / own.likelihood_update.flatten(2).norm(dim=2)
    assert torch.allclose(ratio, r_norm / r_norm.mean(1, keepdim=True), rtol=1e-10)  # ζ/mean_s‖r_s‖ instead of ζ/‖r_s‖
    vp = first_step(init="vp")
    assert torch.allclose(vp.x, own.x * math.sqrt(1 + 20.0**2) / 20.0, rtol=1e-12)  # x_T = sqrt(1 + σ_0²) n
    # Clipping x̂0 + Δx_l changes nothing while it stays inside [-1, 1] (small steps near the data), and acts otherwise.
    near = karras_sigmas(4, 0.01, 0.5)
    small = dict(samples=2, seed=[5, 6], jacobian=False, zeta=1e-3)
    assert torch.allclose(sample_dps(gauss8, op, y, near, clip_x0=True, **small).x0, sample_dps(gauss8, op, y, near, **small).x0, atol=1e-12)
    big = dict(samples=2, seed=[5, 6], jacobian=False, zeta=3.0)
    assert not torch.allclose(sample_dps(gauss8, op, y, sigmas, clip_x0=True, **big).x0, sample_dps(gauss8, op, y, sigmas, **big).x0)
    for bad, match in (({"residual_norm": "batch"}, "residual_norm"), ({"init": "vp0"}, "init")):
        with pytest.raises(ValueError, match=match):
            sample_dps(gauss8, op, y, sigmas, **bad)


def test_ddpm_schedule_and_official_weight(gauss8):
    from priorshift.diffusion import VPDenoiser, ddpm_sigmas
    from priorshift.diffusion.schedules import ddpm_step_weights
    from priorshift.samplers import SamplingPlan

    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)  # diffusers' default linear schedule
    ac = torch.cumprod(1 - betas, 0)
    D = VPDenoiser(lambda x, t: torch.zeros_like(x), ac, betas=betas)
    sigmas = SamplingPlan("dps", steps=20, schedule="ddpm").sigmas(CountingDenoiser(D))
    t = torch.arange(950, -1, -50)  # DDPMScheduler.set_timesteps(20), leading spacing
    assert torch.equal(sigmas, torch.cat([((1 - ac[t]) / ac[t]).sqrt(), torch.zeros(1, dtype=torch.float64)]))
    assert torch.equal(sigmas, ddpm_sigmas(ac, 20)[0])
    # The official weight sqrt(β_t) on the VP update is sqrt(β_t / ᾱ_t) on the VE one; without betas it comes from
    # ᾱ alone (β_t/ᾱ_t = σ_t² − σ_{t−1}²), exact in float64.
    w = ddpm_step_weights(D, sigmas)
    assert torch.allclose(w, (betas[t] / ac[t]).sqrt(), rtol=1e-12)
    assert torch.allclose(ddpm_step_weights(VPDenoiser(D.model, ac), sigmas), w, rtol=1e-9)
    with pytest.raises(ValueError, match="DDPM prior"):  # neither timesteps nor a noise range (gauss8 has one: the linear grid)
        SamplingPlan("dps", steps=20, schedule="ddpm").sigmas(lambda x, sigma: x)
    with pytest.raises(ValueError, match="sigma_min and sigma_max unset"):
        SamplingPlan("dps", steps=20, schedule="ddpm", sigma_min=0.1)
    with pytest.raises(ValueError, match="betas has shape"):
        VPDenoiser(D.model, ac, betas=betas[:10])
