"""``local-residual`` against its closed form on a Gaussian prior.

Gaussian prior ``N(μ, Σ)``: ``D(x + σz, σ) = μ + W (x + σz − μ)``, ``W = Σ(Σ + σ²I)⁻¹``, so for a fixed image
``x − D(x + σz, σ) = (I − W)(x − μ) − σ W z``: the residual averaged over K levels and R draws is normal with mean
``1/K Σ_k (I − W_k)(x − μ)`` and covariance ``Σ_k σ_k² W_k W_kᵀ / (K² R)``. Each pixel is tested within 5 sd
(64 pixels: a false failure has probability < 4e-5).
"""

import pytest
import torch

from priorshift.analytic import stationary_gaussian
from priorshift.detectors import LocalResidual
from priorshift.detectors.local_residual import box_filter
from priorshift.diffusion import CountingDenoiser


@pytest.fixture
def prior():
    return stationary_gaussian(8, length_scale=1.5, variance=0.25, mean=0.2)


def test_the_mean_residual_matches_its_closed_form(prior):
    sigmas, repeats = (0.1, 0.5), 50
    x = prior.sample(3, torch.Generator().manual_seed(0))
    x[1, 0, 2:5, 2:5] -= 0.8  # a focal change, as a lesion
    out = LocalResidual(prior, sigmas=sigmas, repeats=repeats, window=3).score(x, seed=[7, 8, 9])
    eye = torch.eye(prior.dim, dtype=torch.float64)
    mean, cov = 0, 0
    for s in sigmas:
        w = prior.cov @ torch.linalg.inv(prior.cov + s**2 * eye)
        mean = mean + (eye - w) @ (x.flatten(1) - prior.mean.flatten()).T / len(sigmas)
        cov = cov + s**2 * w @ w.T / (len(sigmas) ** 2 * repeats)
    sd = cov.diagonal().sqrt()
    z = (out.residual.flatten(1) - mean.T) / sd
    assert z.abs().max() < 5, f"max |z| {z.abs().max():.2f}"
    # the focal change is where the map peaks
    peak = out.map[1].argmax()
    assert 2 <= peak // 8 <= 4 and 2 <= peak % 8 <= 4
    assert out.score[1] > out.score[0] and out.score[1] > out.score[2]


def test_map_is_the_filtered_residual_and_the_score_its_max_over_the_tissue(prior):
    x = prior.sample(2, torch.Generator().manual_seed(1)).clamp(-1, 1)
    x[0, 0, :, :4] = -1.0  # air on the left half of image 0
    x[1] = -1.0  # image 1 is all air: scored over every pixel
    det = LocalResidual(prior, sigmas=(0.2,), repeats=2, window=3, foreground=-0.95)
    counter = det.prior = CountingDenoiser(prior)
    out = det.score(x, seed=[0, 1])
    assert out.nfe == counter.nfe == 2 * 1 * 2
    full = box_filter(out.residual, 3).abs()
    torch.testing.assert_close(out.map[0, :, 4:], full[0, :, 4:])
    assert (out.map[0, :, :4] == 0).all()
    torch.testing.assert_close(out.score[0], full[0, :, 4:].max())
    torch.testing.assert_close(out.score[1], full[1].max())
    no_region = LocalResidual(prior, sigmas=(0.2,), repeats=2, window=3).score(x, seed=[0, 1])
    torch.testing.assert_close(no_region.map, full)


def test_box_filter_averages_the_pixels_inside_the_image():
    m = torch.arange(30.0, dtype=torch.float64).reshape(1, 5, 6) ** 1.5
    out = box_filter(m, 3)
    for i in range(5):
        for j in range(6):
            win = m[0, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2]
            torch.testing.assert_close(out[0, i, j], win.mean())
    torch.testing.assert_close(box_filter(m, 1), m)


def test_scores_do_not_depend_on_the_batch(prior):
    x = prior.sample(4, torch.Generator().manual_seed(2))
    det = LocalResidual(prior, sigmas=(0.1,), repeats=2, window=3)
    whole = det.score(x, seed=[10, 11, 12, 13]).score
    parts = torch.cat([det.score(x[:1], seed=[10]).score, det.score(x[1:], seed=[11, 12, 13]).score])
    torch.testing.assert_close(whole, parts)


def test_bad_settings_get_one_clear_error(prior):
    with pytest.raises(ValueError, match="window must be odd"):
        LocalResidual(prior, window=4)
    with pytest.raises(ValueError, match="foreground"):
        LocalResidual(prior, foreground=2.0)
    with pytest.raises(ValueError, match="sigma"):
        LocalResidual(prior, sigmas=(0.0,))
    with pytest.raises(ValueError, match="repeats"):
        LocalResidual(prior, repeats=0)
    with pytest.raises(ValueError, match="larger than the images"):
        LocalResidual(prior, sigmas=(0.1,), window=9).score(prior.sample(1, torch.Generator().manual_seed(0)))
