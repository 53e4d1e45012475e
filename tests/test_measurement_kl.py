"""Measurement-domain KL (Shoushtari et al., arXiv 2505.11482) against the Gaussian closed form.

Oracles: two Gaussian priors with exact denoisers (``GaussianPrior``) and their closed-form ``KL(p ‖ q)``.
Monte-Carlo tolerances are derived from the estimator's own standard error (per-image contributions are
i.i.d.): a test allows 4 standard errors (a false failure about once in 15,000 runs) plus the deterministic
quadrature/truncation error measured in ``test_default_grid_integrates_the_exact_integrand``.

The σ grid: 32 log-spaced levels on [0.002, 80] (EDM's training range). On ``ln σ`` the integrand
``E‖D_p − D_q‖² σ⁻²`` vanishes like σ² below 0.002 and like σ⁻² above 80, so the two ends lose 0.05% of the
KL here (the head/tail estimates ``g(σ_0)/2`` and ``g(σ_K)/2`` recover it to 1e-4) and the trapezoid error on
32 points is below 1e-5 relative.

Measured ratios (measurement domain / closed-form KL, the shift "both" below, N = 4000 images, 1 draw,
2×2-pixel blocks on 8×8 images; ``benchmarks/measurement_kl.py`` has the 16×16 family):

===========  =====================  =========================
p            weight="theorem"       weight="none" (W = I)
===========  =====================  =========================
0.2          177   (= 125 × 1.418)  1.418 ± 0.010
0.5          16.3  (= 8 × 2.034)    2.034 ± 0.014
0.8          3.33  (= 1.953 × 1.706) 1.706 ± 0.010
===========  =====================  =========================

The theorem's weight ``W² = E[P]⁻³ = p⁻³`` multiplies the whole estimate (it is a constant for inpainting);
for a pure mean shift ``D_p − D_q`` does not depend on the input at all, so the ratio is exactly ``p⁻³``
(``test_pure_mean_shift_ratio_is_exactly_p_to_the_minus_3``). What remains, ``r(p) = ratio · p³``, is asserted
at the values above within 4 test standard errors + 3 reference standard errors: the zero-filled missing
pixels make the two denoisers disagree *more* than on clean images (r > 1), r → 1 as p → 1 (exact at p = 1).
"""

import math

import pytest
import torch

from priorshift.analytic import GaussianPrior, stationary_gaussian
from priorshift.detectors import MeasurementKL, MeasurementKLScore
from priorshift.detectors.measurement_kl import log_sigma_grid, mri_observation_probability
from priorshift.diffusion import CountingDenoiser
from priorshift.operators import MRI, Inpainting, cartesian_mask, random_block_mask

N = 400


def _p():
    return stationary_gaussian(8, length_scale=2.0, variance=0.25, nugget=1e-2)


def _shifts():
    return {
        "mean": stationary_gaussian(8, length_scale=2.0, variance=0.25, mean=0.2, nugget=1e-2),
        "cov": stationary_gaussian(8, length_scale=1.5, variance=0.25, nugget=1e-2),
        "both": stationary_gaussian(8, length_scale=1.5, variance=0.25, mean=0.2, nugget=1e-2),
    }


@pytest.fixture(scope="module")
def images():
    return _p().sample(N, torch.Generator().manual_seed(0))


def _exact_g(P: GaussianPrior, Q: GaussianPrior, sigma: float) -> float:
    """Closed-form ``E_{x~p} ‖D_p(x_σ) − D_q(x_σ)‖² σ⁻²``: both denoisers are affine, ``D(z) = A z + b``."""

    def affine(prior):
        lam, U = prior.eigvals, prior.eigvecs
        A = (U * (lam / (lam + sigma**2))) @ U.T
        return A, prior.mean[0] - A @ prior.mean[0]

    (Ap, bp), (Aq, bq) = affine(P), affine(Q)
    M, b = Ap - Aq, bp - bq
    C = P.cov + sigma**2 * torch.eye(P.dim, dtype=torch.float64)
    return float(torch.trace(M @ C @ M.T) + ((M @ P.mean[0] + b) ** 2).sum()) / sigma**2


# -- the image-domain identity and the grid ------------------------------------------------------------
@pytest.mark.parametrize("shift", ["mean", "cov", "both"])
def test_default_grid_integrates_the_exact_integrand(shift):
    """KL(p‖q) = ∫ E‖D_p − D_q‖² σ⁻³ dσ (no factor ½ in VE form): the exact integrand on the default grid,
    trapezoid on ln σ, is within 0.1% of the closed form; with the head/tail estimates within 1e-4."""
    P, Q = _p(), _shifts()[shift]
    kl = float(P.kl(Q)[0])
    s = log_sigma_grid()
    assert s.numel() == 32 and float(s[0]) == 0.002 and float(s[-1]) == 80.0
    g = torch.tensor([_exact_g(P, Q, float(v)) for v in s], dtype=torch.float64)
    u = s.log()
    quad = float((0.5 * (u[1:] - u[:-1]) * (g[1:] + g[:-1])).sum())
    assert abs(quad - kl) / kl < 1e-3
    assert abs(quad + float(g[0]) / 2 + float(g[-1]) / 2 - kl) / kl < 1e-4


@pytest.mark.parametrize("shift", ["mean", "cov", "both"])
def test_image_domain_estimator_equals_closed_form_kl(images, shift):
    P, Q = _p(), _shifts()[shift]
    kl = float(P.kl(Q)[0])
    est = MeasurementKL(P, Q).estimate(images, seed=0)
    assert est.domain == "image" and est.n_images == N and est.draws == 1
    assert abs(est.kl_nats - kl) / kl < 0.05
    assert abs(est.kl_nats - kl) <= 4 * est.stderr + 1e-3 * kl
    # the curve is the cumulative integral: starts at 0, never decreases, ends at the total
    assert float(est.curve[0]) == 0.0 and bool((est.curve[1:] >= est.curve[:-1]).all())
    assert est.curve[-1].item() == pytest.approx(est.kl_nats) and est.per_image.mean().item() == pytest.approx(est.kl_nats)
    assert est.nfe == 2 * N * 32  # D_p and D_q at every (image, σ)
    head, tail = est.truncation_nats
    assert 0 <= head < 1e-3 * kl and 0 <= tail < 1e-3 * kl


# -- the measurement domain (Theorem 1), inpainting ----------------------------------------------------
@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_pure_mean_shift_ratio_is_exactly_p_to_the_minus_3(images, p):
    """For N(μ_p, Σ) vs N(μ_q, Σ), D_p − D_q = σ²(Σ + σ²I)⁻¹(μ_p − μ_q) whatever the input: the theorem's weight
    W² = p⁻³ multiplies the exact answer; with W = I the measurement domain is exact."""
    P, Q = _p(), _shifts()["mean"]
    img = MeasurementKL(P, Q).estimate(images[:20], seed=0)
    theorem = MeasurementKL(P, Q, "inpainting", p=p, block=2).estimate(images[:20], seed=0)
    plain = MeasurementKL(P, Q, "inpainting", p=p, block=2, weight="none").estimate(images[:20], seed=0)
    assert theorem.kl_nats / img.kl_nats == pytest.approx(p**-3, rel=1e-9)
    assert plain.kl_nats == pytest.approx(img.kl_nats, rel=1e-9)


# r(p) = ratio · p³ measured with N = 4000 (mean, standard error); see the module docstring.
MEASURED_R = {0.2: (1.418, 0.010), 0.5: (2.034, 0.014), 0.8: (1.706, 0.010)}


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_measurement_domain_inpainting_tracks_the_kl(images, p):
    P, Q = _p(), _shifts()["both"]
    kl = float(P.kl(Q)[0])
    est = MeasurementKL(P, Q, "inpainting", p=p, block=2).estimate(images, seed=1)
    assert est.domain == "inpainting" and est.masks == "redrawn per term" and est.weight == "theorem"
    ratio = est.kl_nats / kl
    r, r_se = MEASURED_R[p]
    assert abs(ratio * p**3 - r) <= 4 * est.stderr / kl * p**3 + 3 * r_se, f"p={p}: ratio {ratio:.3f} = p⁻³ × {ratio * p**3:.3f}"
    plain = MeasurementKL(P, Q, "inpainting", p=p, block=2, weight="none").estimate(images, seed=1)
    assert plain.kl_nats * p**-3 == pytest.approx(est.kl_nats, rel=1e-12)  # W is the constant p^(-3/2) here
    assert 1.0 < plain.kl_nats / kl < 2.5  # within a factor 2.5 of the KL, from above, without the weight


def test_p_equal_1_is_the_image_domain(images):
    P, Q = _p(), _shifts()["both"]
    img = MeasurementKL(P, Q).estimate(images[:50], seed=3)
    meas = MeasurementKL(P, Q, "inpainting", p=1.0, block=2).estimate(images[:50], seed=3)
    torch.testing.assert_close(meas.per_image, img.per_image, rtol=1e-12, atol=0)


def test_measured_data_with_their_own_masks_estimate_the_same_kl(images):
    """Real measurements: one mask per image, reused at every σ. Same expectation as masks redrawn per term."""
    P, Q = _p(), _shifts()["both"]
    g = torch.Generator().manual_seed(5)
    masks = torch.stack([random_block_mask(8, 2, 0.5, generator=g) for _ in range(N)])  # (N, 1, 8, 8)
    y = images * masks
    est = MeasurementKL(P, Q, "inpainting", p=0.5, block=2)
    given = est.estimate(y, masks=masks, seed=1)
    redrawn = est.estimate(images, seed=1)
    assert given.masks == "given"
    assert abs(given.kl_nats - redrawn.kl_nats) <= 4 * math.hypot(given.stderr, redrawn.stderr)


def test_fully_observed_measurements_are_the_image_domain(images):
    P, Q = _p(), _shifts()["cov"]
    img = MeasurementKL(P, Q).estimate(images[:30], seed=2)
    op = Inpainting(torch.ones(1, 8, 8))
    inp = MeasurementKL(P, Q, op, p=1.0, block=2).estimate(op(images[:30]), masks="operator", seed=2)
    torch.testing.assert_close(inp.per_image, img.per_image, rtol=1e-12, atol=0)
    mri = MRI(torch.ones(8, 8))
    full = MeasurementKL(P, Q, mri, acceleration=1, center_lines=8).estimate(mri(images[:30]), masks="operator", seed=2)
    torch.testing.assert_close(full.per_image, img.per_image, rtol=1e-9, atol=1e-12)


# -- same noise, zero for p = q --------------------------------------------------------------------------
class _Spy:
    """A denoiser that records every input it sees."""

    def __init__(self, prior):
        self.prior, self.inputs = prior, []
        self.shape, self.sigma_min, self.sigma_max = prior.shape, prior.sigma_min, prior.sigma_max

    def __call__(self, x, sigma):
        self.inputs.append((x.clone(), sigma.clone()))
        return self.prior(x, sigma)


@pytest.mark.parametrize("operator", [None, "inpainting", "mri"])
def test_both_denoisers_see_the_same_noise_draw(images, operator):
    P, Q = _p(), _shifts()["both"]
    sp, sq = _Spy(P), _Spy(Q)
    kw = {"p": 0.5, "block": 2} if operator == "inpainting" else {}
    MeasurementKL(sp, sq, operator, max_batch=64, **kw).estimate(images[:5], seed=0)
    assert len(sp.inputs) == len(sq.inputs) > 1
    for (xp, s1), (xq, s2) in zip(sp.inputs, sq.inputs):
        assert torch.equal(xp, xq) and torch.equal(s1, s2)


@pytest.mark.parametrize("operator", [None, "inpainting", "mri"])
def test_zero_for_p_equal_q(images, operator):
    """Two distinct but identical priors: exactly 0 — with a separate noise draw per denoiser (the official
    code) every term would be ‖D(x + σn₁) − D(x + σn₂)‖² σ⁻³ ≈ 2d/σ > 0 at small σ instead."""
    kw = {"p": 0.5, "block": 2} if operator == "inpainting" else {}
    est = MeasurementKL(_p(), _p(), operator, **kw).estimate(images[:20], seed=0)
    assert est.kl_nats == 0.0 and float(est.curve.abs().max()) == 0.0 and est.stderr == 0.0


# -- MRI ------------------------------------------------------------------------------------------------
def test_mri_observation_probability_matches_the_mask_generator():
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([cartesian_mask(16, 4, 2, generator=g)[0] for _ in range(2000)]).mean(0)
    prob = mri_observation_probability(16, 4, 2)
    assert prob[7:9].tolist() == [1.0, 1.0] and prob[0].item() == pytest.approx(2 / 14)
    assert float((draws.double() - prob).abs().max()) < 4 * math.sqrt(prob[0] * (1 - prob[0]) / 2000) + 1e-12
    op = MRI(cartesian_mask(16, 4, 2, generator=g))
    est = MeasurementKL(stationary_gaussian(16), stationary_gaussian(16), op)
    assert (est.acceleration, est.center_lines) == (4.0, 2)  # read off the operator's mask


def test_mri_measurement_domain_is_finite_and_weighted():
    P = stationary_gaussian(16, length_scale=2.0, variance=0.25, nugget=1e-2)
    Q = stationary_gaussian(16, length_scale=1.5, variance=0.25, mean=0.2, nugget=1e-2)
    x = P.sample(40, torch.Generator().manual_seed(1))
    kl = float(P.kl(Q)[0])
    plain = MeasurementKL(P, Q, "mri", acceleration=4, center_lines=2, weight="none").estimate(x, seed=0)
    theorem = MeasurementKL(P, Q, "mri", acceleration=4, center_lines=2).estimate(x, seed=0)
    # N = 300: W = I gives 0.620 ± 0.003 of the KL, the theorem's W 148 ± 0.7 (outer columns weigh (2/14)⁻³ = 343)
    assert 0.5 < plain.kl_nats / kl < 0.75 and 100 < theorem.kl_nats / kl < 200
    assert theorem.nfe == 2 * 40 * 32


# -- the image-level detector -----------------------------------------------------------------------------
def test_image_level_scores_average_to_the_dataset_estimate():
    det = MeasurementKLScore.example()
    x = det.prior.sample(6, torch.Generator().manual_seed(0))
    y = det.operator(x, seed=list(range(6)))
    s = det.score(y, seed=list(range(6)))
    est = MeasurementKL(det.matched, det.prior, det.operator, sigmas=log_sigma_grid(12), draws=2, noise_std=0.05).estimate(
        y, masks="operator", seed=list(range(6))
    )
    torch.testing.assert_close(s.score, est.per_image)
    assert s.nfe == est.nfe == 2 * 6 * 12 * 2 and s.extras["integrand"].shape == (6, 12)


# -- bad input ----------------------------------------------------------------------------------------------
def test_priors_of_different_image_sizes():
    with pytest.raises(ValueError, match="same size"):
        MeasurementKL(stationary_gaussian(8), stationary_gaussian(16))


@pytest.mark.parametrize(
    "sigmas, match",
    [
        ([0.1, 0.05, 1.0], "increasing"),
        ([0.1, 0.1, 1.0], "increasing"),
        ([0.0, 0.1, 1.0], "touch 0"),
        ([-0.1, 0.1, 1.0], "touch 0"),
        ([0.1], "at least 2"),
        ([0.1, float("nan")], "NaN"),
    ],
)
def test_bad_sigma_grids(sigmas, match):
    with pytest.raises(ValueError, match=match):
        MeasurementKL(_p(), _p(), sigmas=sigmas)


@pytest.mark.parametrize("p", [0.0, -0.2, 1.5, float("nan"), "half"])
def test_p_outside_0_1(p):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        MeasurementKL(_p(), _p(), "inpainting", p=p)


def test_other_bad_settings_and_data_fail_before_any_network_call(images):
    with pytest.raises(ValueError, match="needs p"):
        MeasurementKL(_p(), _p(), "inpainting")
    with pytest.raises(ValueError, match="block"):
        MeasurementKL(_p(), _p(), "inpainting", p=0.5, block=3)
    with pytest.raises(ValueError, match="operator must be"):
        MeasurementKL(_p(), _p(), "ct")
    with pytest.raises(ValueError, match="image domain"):
        MeasurementKL(_p(), _p(), p=0.5)
    with pytest.raises(ValueError, match="weight"):
        MeasurementKL(_p(), _p(), weight="paper")
    cp, cq = CountingDenoiser(_p()), CountingDenoiser(_shifts()["cov"])
    est = MeasurementKL(cp, cq, "inpainting", p=0.5, block=2)
    for bad in (images[:2, :, :, :-1], images[:2].numpy(), torch.full_like(images[:2], float("nan")), images[:0]):
        with pytest.raises(ValueError, match="shape|NaN|Tensor|0 samples"):
            est.estimate(bad)
    with pytest.raises(ValueError, match="masks"):
        est.estimate(images[:2], masks=torch.ones(3, 1, 8, 8))
    with pytest.raises(ValueError, match="only 0"):
        est.estimate(images[:2], masks=torch.full((2, 1, 8, 8), 0.5))
    with pytest.raises(ValueError, match="image domain"):
        MeasurementKL(cp, cq).estimate(images[:2], masks=torch.ones(8, 8))
    assert cp.nfe == cq.nfe == 0
