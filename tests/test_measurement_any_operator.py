"""Every registered operator works in prior alignment (``priorshift.adapt``) and in the measurement-domain KL
(``MeasurementKL`` and the ``measurement-kl`` detector): measurements are made and back-projected by the operator.

Operators are built through ``example`` at 8×8, as in ``tests/test_operators.py``; priors are analytic Gaussians
with exact denoisers, so the KL checks are exact identities: for a pure mean shift ``N(μ_p, Σ)`` vs ``N(μ_q, Σ)``
``D_p(z) − D_q(z) = σ² (Σ + σ² I)⁻¹ (μ_p − μ_q)`` does not depend on the input ``z``, so with ``W = I`` every
operator's measurement-domain estimate equals the image-domain one (1e-9) — which is the closed-form KL up to the
grid's quadrature error (1e-3 relative on 32 levels, ``tests/test_measurement_kl.py``).
"""

from __future__ import annotations

import math

import pytest
import torch

from priorshift import registry
from priorshift.adapt import AdaptConfig, adapt_prior, measured_set, simulate_measurements
from priorshift.analytic import stationary_gaussian
from priorshift.detectors import MeasurementKL, MeasurementKLScore
from priorshift.detectors.measurement_kl import log_sigma_grid
from priorshift.operators import back_project, measure

NAMES = registry.names("operator")
SIZE = 8
SEEDS = [10, 11, 12, 13]


def _op(name, noise_std=0.05):
    return registry.get("operator", name).example(image_size=SIZE, channels=1, noise_std=noise_std)


def _priors():
    p = stationary_gaussian(SIZE, length_scale=2.0, variance=0.04, mean=0.1, nugget=1e-2)
    mean_shift = stationary_gaussian(SIZE, length_scale=2.0, variance=0.04, mean=0.3, nugget=1e-2)
    cov_shift = stationary_gaussian(SIZE, length_scale=1.0, variance=0.04, mean=0.1, nugget=1e-2)
    return p, mean_shift, cov_shift


def _images(n=4, seed=0):
    return _priors()[0].sample(n, torch.Generator().manual_seed(seed))


class _Spy:
    """A denoiser that records every input it sees."""

    def __init__(self, prior):
        self.prior, self.inputs, self.shape = prior, [], prior.shape

    def __call__(self, x, sigma):
        self.inputs.append((x.clone(), sigma.clone()))
        return self.prior(x, sigma)


def test_every_operator_is_covered():
    assert set(NAMES) >= {"identity", "inpainting", "blur", "downsample", "ct", "mri"}


# -- alignment: simulation and the training set ----------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_adapt_measures_with_the_operator(name):
    op, x = _op(name), _images().float()
    y, masks = simulate_measurements(op, x, seed=SEEDS)
    y0, masks0 = simulate_measurements(_op(name, noise_std=0.0), x, seed=SEEDS)
    # the masks come from the seeds (drawn before the noise), and they are the ones y was made with
    assert (masks is None) == (masks0 is None) and (masks is None or torch.equal(masks, masks0))
    used = op if masks is None else type(op)(masks, 0.0)
    torch.testing.assert_close(used.A(x), y0, rtol=1e-5, atol=1e-6)
    if masks is not None and getattr(op, "mask_family", None) is not None:
        assert masks.shape[0] == 4 and not torch.equal(masks[0], masks[1])  # each image its own mask
    # the noise is the operator's: std 0.05, a std estimate over n draws has relative sd ≈ 1/sqrt(2n)
    r = y - y0
    assert abs(float(r.std()) / 0.05 - 1) < 5 / math.sqrt(2 * r.numel())
    # image b measured alone with its own seed: the same measurement
    y2, _ = simulate_measurements(op, x[2:3], seed=SEEDS[2:3])
    torch.testing.assert_close(y2, y[2:3], rtol=1e-5, atol=1e-6)
    # the training set: the operator's back-projection of y, clipped; loss masks only for inpainting
    data = measured_set(op, y, masks)
    assert data.kind == name and len(data) == 4 and data.targets.shape == (4, 1, SIZE, SIZE)
    torch.testing.assert_close(data.targets, back_project(type(op)(masks, 0.05) if masks is not None else op, y).float().clamp(-1, 1))
    assert (data.masks is not None) == (name == "inpainting")
    if data.masks is not None:
        assert torch.equal(data.masks, masks.expand(4, 1, SIZE, SIZE))


@pytest.fixture(scope="module")
def tiny_prior(tmp_path_factory):
    from priorshift.diffusion import UNetConfig
    from priorshift.diffusion.checkpoint import load_prior
    from priorshift.diffusion.training import TrainConfig, train

    cfg = TrainConfig(name="tiny", steps=1, batch_size=4, checkpoint_every=1, unet=UNetConfig(image_size=SIZE, widths=(8, 16), embedding_dim=16, groups=4))
    return load_prior(train(cfg, _images(8, 1).float().clamp(-1, 1), tmp_path_factory.mktemp("tiny"), progress=False))


@pytest.mark.parametrize("name", NAMES)
def test_adapt_runs_on_every_operator(tmp_path, tiny_prior, name):
    op = _op(name)
    y, masks = simulate_measurements(op, _images(6, 2).float(), seed=0)
    res = adapt_prior(tiny_prior, measured_set(op, y, masks), tmp_path / "run",
                      AdaptConfig(steps=2, eval_every=1, batch_size=4, warmup_steps=0, val_draws=1, patience=5))
    assert res.steps_run == 2 and math.isfinite(res.best_val_loss) and res.path.exists()


# -- the measurement-domain KL ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_measurement_kl_of_a_mean_shift_is_the_image_kl_for_every_operator(name):
    P, Q, _ = _priors()
    x = _images()
    image = MeasurementKL(P, Q).estimate(x, seed=SEEDS)
    assert image.kl_nats == pytest.approx(float(P.kl(Q)[0]), rel=1e-3)
    op = _op(name)
    simulated = MeasurementKL(P, Q, op, weight="none").estimate(x, seed=SEEDS)
    assert simulated.domain == name and simulated.weight == "none"
    assert simulated.masks == ("redrawn per term" if getattr(op, "mask_family", None) is not None else "fixed")
    torch.testing.assert_close(simulated.per_image, image.per_image, rtol=1e-9, atol=0)
    y, used = measure(op, x, seed=SEEDS)  # real measurements: each its own mask where the operator draws masks
    det = MeasurementKLScore(Q, used, matched=P, weight="none", sigmas=log_sigma_grid())
    s = det.score(y, seed=SEEDS)
    torch.testing.assert_close(s.score, image.per_image, rtol=1e-9, atol=0)
    assert s.nfe == 2 * 4 * 32


@pytest.mark.parametrize("name", NAMES)
def test_measurement_kl_sign_zero_and_batch_independence_for_every_operator(name):
    P, _, C = _priors()
    x, op = _images(), _op(name)
    y, used = measure(op, x, seed=SEEDS)
    grid = log_sigma_grid(12)
    same = MeasurementKLScore(stationary_gaussian(SIZE, length_scale=2.0, variance=0.04, mean=0.1, nugget=1e-2), used, matched=P, sigmas=grid)
    assert float(same.score(y, seed=SEEDS).score.abs().max()) == 0.0  # p = q: exactly 0, the same noise draw for both
    spy = _Spy(C)
    shifted = MeasurementKLScore(spy, used, matched=P, sigmas=grid).score(y, seed=SEEDS)
    assert bool((shifted.score > 0).all()) and bool(torch.isfinite(shifted.score).all())  # higher = more shifted
    # the denoisers see the operator's back-projection of each measurement plus σ n: at σ = 0.002 within 6σ of it
    z = torch.cat([zi for zi, si in spy.inputs]).reshape(4, 12, 1, SIZE, SIZE)[:, 0]
    assert float((z - back_project(used, y)).abs().max()) < 6 * 0.002
    est = MeasurementKL(P, C, op, sigmas=grid)
    whole = est.estimate(x, seed=SEEDS)
    alone = est.estimate(x[1:2], seed=SEEDS[1:2])  # every term's mask and noise come from its image's seed
    torch.testing.assert_close(alone.per_image, whole.per_image[1:2], rtol=1e-7, atol=0)


def test_settings_that_do_not_fit_the_operator_fail_clearly():
    P, Q, _ = _priors()
    ct, x = _op("ct"), _images()
    y, _ = measure(ct, x, seed=SEEDS)
    with pytest.raises(ValueError, match="an operator instance brings its own masks and noise"):
        simulate_measurements(ct, x, p=0.5)
    with pytest.raises(ValueError, match="masks are for inpainting and MRI measurements; the ct operator holds none"):
        measured_set(ct, y, torch.ones(SIZE, SIZE))
    with pytest.raises(ValueError, match="the ct operator draws none"):
        MeasurementKL(P, Q, ct, p=0.5)
    with pytest.raises(ValueError, match="take masks='operator'"):
        MeasurementKL(P, Q, ct).estimate(y, masks=torch.ones(SIZE, SIZE))
    with pytest.raises(ValueError, match="the ct operator do not fit measurements of shape"):
        MeasurementKL(P, Q, ct).estimate(y[:, :, :3], masks="operator")
    with pytest.raises(ValueError, match=r"y must have shape \(\*, \*, 8, 12\)"):
        MeasurementKLScore(Q, ct, matched=P).score(y[:, :, :3])
