"""The baselines against their closed forms on a Gaussian prior, and the measurement path of image detectors.

Gaussian prior ``N(μ, Σ)``, ``Σ = U diag(λ) Uᵀ``; for ``x ~ prior`` and ``z ~ N(0, I)``:

* ``D(x + σz, σ) − x = (W − I)(x − μ) + σ W z`` with ``W = Σ(Σ + σ²I)⁻¹``; in the eigenbasis its components
  are independent ``N(0, v_i)``, ``v_i = λ_i σ² / (λ_i + σ²)``. So the denoising error ``e = Σ_i v_i g_i²``
  (``g_i`` iid N(0, 1)): ``E e = Σ v_i = tr((Σ⁻¹ + σ⁻² I)⁻¹)`` and ``Var e = 2 Σ v_i²``.
* ``s(x + σz, σ) = −(Σ + σ²I)⁻¹(x + σz − μ) ~ N(0, (Σ + σ²I)⁻¹)``: ``E ‖s‖² = Σ 1/(λ_i + σ²)``,
  ``Var = 2 Σ 1/(λ_i + σ²)²``; at the clean input ``s = −(Σ + σ²I)⁻¹(x − μ)``: ``E ‖s‖² = Σ λ_i/(λ_i + σ²)²``,
  ``Var = 2 Σ λ_i²/(λ_i + σ²)⁴``.
* ``y = M x + σ_y n ~ N(M μ, C)``, ``C = M Σ Mᵀ + σ_y² I``: ``t = ‖y‖²/m`` has ``E t = (tr(MΣMᵀ) + ‖Mμ‖²)/m + σ_y²``
  and ``Var t = (2 tr(C²) + 4 (Mμ)ᵀ C (Mμ)) / m²``.

Monte-Carlo tolerances: the mean of N iid draws is within ``4 sqrt(Var / N)`` of its expectation except with
probability ≈ 6e-5 (the statistics are sums of many independent terms, close to normal at these N).
"""

import inspect
import math

import pytest
import torch

import test_detectors as contract
from priorshift.analytic import operator_matrix, stationary_gaussian
from priorshift.detectors import DenoisingError, FromMeasurements, MeasurementNorm, NotFittedError, Residual, ScoreNorm, score_batches
from priorshift.detectors.baselines import ledoit_wolf
from priorshift.diffusion import CountingDenoiser
from priorshift.operators import Identity, Inpainting, ParallelBeamCT, random_pixel_mask
from priorshift.registry import get


@pytest.fixture
def prior():
    return stationary_gaussian(8, length_scale=1.5, variance=0.25, mean=0.2)


def _mc_close(estimate, expected, var, n, k=4.0):
    tol = k * math.sqrt(var / n)
    assert abs(estimate - expected) < tol, f"{estimate} vs closed form {expected} (tolerance {tol:.3g})"


# -- measurement-norm ---------------------------------------------------------------------------------------
def test_measurement_norm_matches_its_closed_form(prior):
    op = Inpainting(random_pixel_mask(8, 0.5, generator=torch.Generator().manual_seed(3)).double(), noise_std=0.1)
    n = 400
    y = op(prior.sample(n, torch.Generator().manual_seed(0)), seed=list(range(n)))
    det = MeasurementNorm(prior, op, log=False).fit(y)
    M = operator_matrix(op, prior.shape)
    m = M.shape[0]
    C = M @ prior.cov @ M.T + op.noise_std**2 * torch.eye(m, dtype=torch.float64)
    Mmu = M @ prior.mean[0]
    expected = float(torch.trace(M @ prior.cov @ M.T) + Mmu @ Mmu) / m + op.noise_std**2
    var = float(2 * torch.trace(C @ C) + 4 * Mmu @ C @ Mmu) / m**2
    _mc_close(float(det.mean_), expected, var, n)
    # The sample sd of n near-normal draws has relative sd ≈ 1/sqrt(2n) = 3.5%; 15% is > 4 of them.
    assert abs(float(det.std_) / math.sqrt(var) - 1) < 0.15
    s = det.score(y[:5])
    assert s.nfe == 0 and torch.allclose(s.statistic, y[:5].pow(2).flatten(1).mean(1))


def test_measurement_norm_flags_scale_shifts_both_ways(prior):
    op = Inpainting.example(image_size=8, noise_std=0.05)
    y = op(prior.sample(40, torch.Generator().manual_seed(0)), seed=list(range(40)))
    det = MeasurementNorm(prior, op).fit(y[:30])
    clean, up, down = (det.score(t).score for t in (y[30:], 3 * y[30:], y[30:] / 3))
    assert float(up.min()) > float(clean.max()) and float(down.min()) > float(clean.max())
    upper = MeasurementNorm(prior, op, side="upper").fit(y[:30])
    assert float(upper.score(y[30:] / 3).score.max()) < float(upper.score(y[30:]).score.min()), "one-sided: smaller is not shifted"
    with pytest.raises(ValueError, match="side"):
        MeasurementNorm(prior, op, side="lower")


def test_measurement_norm_split_scales():
    # Constant images of value a under the identity: t = a², ln t = 2 ln a. ID values ln t = (−3, −1, 0, 0.5, 1):
    # median 0, upper scale sqrt((0.5² + 1²)/2), lower scale sqrt((3² + 1²)/2) — the long lower tail is not flagged.
    logt = torch.tensor([-3.0, -1.0, 0.0, 0.5, 1.0], dtype=torch.float64)
    y = (logt / 2).exp().reshape(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()
    det = MeasurementNorm(None, Identity(noise_std=0.1)).fit(y)
    s_up, s_lo = math.sqrt((0.25 + 1) / 2), math.sqrt((9 + 1) / 2)
    assert float(det.center_) == 0 and abs(float(det.scale_upper_) - s_up) < 1e-12 and abs(float(det.scale_lower_) - s_lo) < 1e-12
    expected = torch.tensor([-3 / s_lo, -1 / s_lo, 0, 0.5 / s_up, 1 / s_up], dtype=torch.float64)
    out = det.score(y)
    torch.testing.assert_close(out.z, expected)
    torch.testing.assert_close(out.score, expected.abs())


@pytest.mark.parametrize("cls", [MeasurementNorm, Residual, DenoisingError, ScoreNorm, FromMeasurements])
def test_score_before_fit_raises(cls):
    det = cls.example()
    x = det.prior.sample(2, torch.Generator().manual_seed(0))
    data = x if det.input_kind == "images" else det.operator(x, seed=[0, 1])
    with pytest.raises(NotFittedError, match="fit"):
        det.score(data)
    with pytest.raises(ValueError, match="at least 2"):
        det.fit(data[:1])
    det.fit(torch.cat([data] * 3))
    assert det.is_fitted()


# -- residual -----------------------------------------------------------------------------------------------
def test_residual_is_zero_for_an_exact_pinv_and_refuses_to_fit(prior):
    x = prior.sample(6, torch.Generator().manual_seed(0))
    for op in (Inpainting.example(image_size=8, noise_std=0.0), Identity(noise_std=0.1)):
        y = op(x, seed=list(range(6)))
        det = Residual(prior, op, reconstruction="pinv")
        assert float(det.statistic(y).abs().max()) < 1e-24, "A A⁺ y = y: the pinv residual is identically zero"
        with pytest.raises(ValueError, match="identically zero"):
            det.fit(y)
        auto = Residual(prior, op)
        assert auto.reconstruction_method == "tikhonov"
        auto.fit(y)
        assert bool((auto.score(y).residual > 0).all()), "the smoothness-regularised residual is not zero"


def test_residual_of_fbp_is_not_zero(prior):
    op = ParallelBeamCT(8, n_views=6, noise_std=0.1)
    y = op(prior.sample(8, torch.Generator().manual_seed(0)), seed=list(range(8)))
    det = Residual(prior, op).fit(y)
    assert det.reconstruction_method == "pinv" and not hasattr(det, "op_norm2_")
    s = det.score(y)
    expected = (y - op.A(op.fbp(y))).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(s.residual, expected)
    assert bool((s.residual > 0).all()) and s.nfe == 0


# -- denoising-error ----------------------------------------------------------------------------------------
def test_denoising_error_matches_the_posterior_covariance_trace(prior):
    sigmas = (0.05, 0.2, 1.0)
    n = 300
    x = prior.sample(n, torch.Generator().manual_seed(0))
    det = DenoisingError(prior, sigmas=sigmas).fit(x, seed=1000)
    for k, s in enumerate(sigmas):
        v = prior.eigvals * s**2 / (prior.eigvals + s**2)  # eigenvalues of (Σ⁻¹ + σ⁻² I)⁻¹
        _mc_close(float(det.mean_[k]), float(v.sum()), float(2 * (v**2).sum()), n)
        assert abs(float(det.std_[k]) / math.sqrt(float(2 * (v**2).sum())) - 1) < 0.2  # rel. sd of a sample sd ≈ 1/sqrt(2n)
    counter = det.prior = CountingDenoiser(prior)
    out = det.score(x[:5], seed=list(range(5)))
    assert out.nfe == counter.nfe == 5 * len(sigmas)
    torch.testing.assert_close(out.map.sum((1, 2)), out.score)
    torch.testing.assert_close(out.score, out.z.sum(1))
    assert out.errors.shape == (5, 3) and out.map.shape == (5, 8, 8)


def test_denoising_error_repeats_and_validation(prior):
    det = DenoisingError(prior, sigmas=(0.1, 0.5), repeats=3).fit(prior.sample(4, torch.Generator().manual_seed(0)))
    counter = det.prior = CountingDenoiser(prior)
    assert det.score(prior.sample(2, torch.Generator().manual_seed(1))).nfe == counter.nfe == 2 * 2 * 3
    for bad in ((), (0.0, 0.1), (0.1, 0.1), (100.0,)):
        with pytest.raises(ValueError, match="sigma"):
            DenoisingError(prior, sigmas=bad)
    with pytest.raises(ValueError, match="repeats"):
        DenoisingError(prior, repeats=0)


# -- score-norm ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("perturb", [True, False])
def test_score_norms_match_their_closed_form(prior, perturb):
    sigmas = (0.05, 0.3)
    n = 300
    x = prior.sample(n, torch.Generator().manual_seed(0))
    det = ScoreNorm(prior, sigmas=sigmas, perturb=perturb).fit(x[:20])
    norms2 = det.score(x, seed=5000).norms.pow(2)
    lam = prior.eigvals
    for k, s in enumerate(sigmas):
        w = 1 / (lam + s**2) if perturb else lam / (lam + s**2) ** 2
        _mc_close(float(norms2[:, k].mean()), float(w.sum()), float(2 * (w**2).sum()), n)
    assert det.stochastic is perturb


def test_score_norm_mahalanobis_and_shrinkage(prior):
    x = prior.sample(30, torch.Generator().manual_seed(0))
    det = ScoreNorm(prior, sigmas=(0.05, 0.2, 1.0), shrinkage=0.0).fit(x, seed=7)
    # With the ML covariance (shrinkage 0), the mean squared Mahalanobis distance of the fit data is exactly K.
    s = det.score(x, seed=7)
    assert abs(float(s.score.mean()) - 3) < 1e-8
    torch.testing.assert_close(s.nll, 0.5 * s.score + 0.5 * torch.logdet(2 * math.pi * det.cov_))
    lw = ScoreNorm(prior, sigmas=(0.05, 0.2, 1.0)).fit(x, seed=7)
    assert 0 < lw.shrinkage_ <= 1
    with pytest.raises(ValueError, match="shrinkage"):
        ScoreNorm(prior, shrinkage=2.0)
    with pytest.raises(ValueError, match="repeats"):
        ScoreNorm(prior, perturb=False, repeats=2)


def test_ledoit_wolf_matches_scikit_learn():
    sklearn_cov = pytest.importorskip("sklearn.covariance")
    z = torch.randn(25, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) @ torch.tensor(
        [[1.0, 0.5, 0, 0], [0, 1, 0.3, 0], [0, 0, 1, 0.8], [0, 0, 0, 1]], dtype=torch.float64
    )
    cov, rho = ledoit_wolf(z)
    ref_cov, ref_rho = sklearn_cov.ledoit_wolf(z.numpy())
    assert abs(rho - ref_rho) < 1e-10
    torch.testing.assert_close(cov, torch.from_numpy(ref_cov), rtol=1e-10, atol=1e-12)


# -- FromMeasurements ---------------------------------------------------------------------------------------
def _from_measurements_score_norm():
    return FromMeasurements(ScoreNorm.example(), Inpainting.example(image_size=8, noise_std=0.05), plan={"sampler": "exact", "steps": 10}, samples=2)


_WRAPPED = {"from-measurements/denoising-error": FromMeasurements.example, "from-measurements/score-norm": _from_measurements_score_norm}
_CONTRACT = [
    (name, {"case": case} if "gross" in name else {})
    for name in (
        "test_declarations", "test_shapes", "test_higher_score_on_a_block_pushed_far_off", "test_batch_independence", "test_seeds",
        "test_bad_input_fails_before_any_network_call", "test_not_fitted", "test_hooks_reach_the_sampler",
        "test_gross_shifts_of_low_density_score_higher",
    )
    for case in (("scaled", "white_noise") if "gross" in name else (None,))
]


@pytest.mark.parametrize("wrapped", sorted(_WRAPPED))
@pytest.mark.parametrize("check, kwargs", _CONTRACT, ids=[f"{n}-{kw.get('case', '')}".rstrip("-") for n, kw in _CONTRACT])
def test_from_measurements_meets_the_detector_contract(wrapped, check, kwargs, monkeypatch, request):
    """The contract tests of ``tests/test_detectors.py``, unchanged, run on FromMeasurements (not registered)."""

    class _Factory:
        example = staticmethod(_WRAPPED[wrapped])

    real_get = contract.get
    monkeypatch.setattr(contract, "get", lambda kind, name: _Factory if name == wrapped else real_get(kind, name))
    fn = getattr(contract, check)
    if "request" in inspect.signature(fn).parameters:
        kwargs = {**kwargs, "request": request}
    fn(name=wrapped, **kwargs)


def test_from_measurements_counts_both_parts_of_its_nfe(prior):
    op = Inpainting.example(image_size=8, noise_std=0.05)
    steps, samples, sigmas = 7, 3, (0.1, 0.5)
    det = FromMeasurements(DenoisingError(prior, sigmas=sigmas), op, plan={"sampler": "exact", "steps": steps}, samples=samples)
    y = op(prior.sample(10, torch.Generator().manual_seed(0)), seed=list(range(10)))
    det.fit(y[:6])
    counter = det.prior = CountingDenoiser(prior)
    calls = []
    out = det.score(y[6:], seed=[1, 2, 3, 4], hooks=[calls.append])
    b = 4
    assert out.nfe == counter.nfe, "the total is what the wrapper counted"
    assert int(out.nfe_reconstruction.sum()) == b * samples * steps  # exact ancestral sampler: one D per step per row
    assert int(out.nfe_detector.sum()) == b * len(sigmas)
    assert int(out.nfe_reconstruction.sum() + out.nfe_detector.sum()) == out.nfe
    assert len(calls) == steps and out.reconstruction.shape == (b, 1, 8, 8)
    batched = score_batches(det, y[6:], batch_size=3, seed=[1, 2, 3, 4])
    assert int(batched.nfe_reconstruction.sum() + batched.nfe_detector.sum()) == batched.nfe == out.nfe
    torch.testing.assert_close(batched.score, out.score)


def test_from_measurements_reconstructs_the_posterior_mean_and_fits_on_reconstructions(prior):
    op = Inpainting.example(image_size=8, noise_std=0.1)
    y = op(prior.sample(4, torch.Generator().manual_seed(0)), seed=[0, 1, 2, 3])
    samples = 64
    det = FromMeasurements(DenoisingError(prior, sigmas=(0.1,)), op, plan={"sampler": "exact", "steps": 10}, samples=samples)
    recon, _ = det.reconstruct(y, seed=[0, 1, 2, 3])
    mean, cov = prior.posterior(op, y)
    # E ‖mean of S samples − posterior mean‖² = tr(Σ_post)/S for an exact sampler; over 4 images of 64
    # weighted χ² terms the ratio is within ±25% of 1; allow 2× for the 10-step discretisation.
    ratio = float((recon - mean).flatten(1).pow(2).sum(1).mean()) / (float(cov.diagonal().sum()) / samples)
    assert ratio < 2.0, ratio
    det.fit(y, seed=[0, 1, 2, 3])
    inner = DenoisingError(prior, sigmas=(0.1,)).fit(recon, seed=[int(s) for s in _inner_seeds([0, 1, 2, 3])])
    torch.testing.assert_close(det.image_detector.mean_, inner.mean_)


def _inner_seeds(seeds):
    from priorshift.detectors.reconstruct import detector_seeds

    return detector_seeds(seeds)


def test_from_measurements_validation(prior):
    op = Inpainting.example(image_size=8)
    with pytest.raises(ValueError, match="images"):
        FromMeasurements(MeasurementNorm(prior, op), op)
    with pytest.raises(ValueError, match="measurement step"):
        FromMeasurements(DenoisingError.example(), op, plan={"sampler": "unconditional"})
    with pytest.raises(ValueError, match="samples"):
        FromMeasurements(DenoisingError.example(), op, samples=0)
    with pytest.raises(ValueError, match="parameter"):
        FromMeasurements(DenoisingError.example(), op, plan={"sampler": "exact", "zeta": 1.0})


def test_baselines_are_registered():
    for name, cls in (("measurement-norm", MeasurementNorm), ("residual", Residual), ("denoising-error", DenoisingError), ("score-norm", ScoreNorm)):
        assert get("detector", name) is cls
