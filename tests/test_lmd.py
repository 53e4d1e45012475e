"""LMD (Lift, Map, Detect; Liu et al., ICML 2023): masks, the replacement inpainter it drives, the median over
attempts, NFE, batch independence, and the sign on a Gaussian mixture with a component the prior lacks.

All on exact analytic priors over 8×8 images (d = 64), a few sampler steps each: the file runs in seconds.
"""

import numpy as np
import pytest
import torch

from priorshift.analytic import GaussianMixturePrior, GaussianPrior, stationary_covariance, stationary_gaussian
from priorshift.detectors import LMD, score_batches
from priorshift.detectors.lmd import DEFAULT_PLAN, attempt_seeds, lmd_masks
from priorshift.diffusion import CountingDenoiser
from priorshift.metrics import lpips_available
from priorshift.operators import Inpainting
from priorshift.registry import get
from priorshift.samplers import SamplingPlan

PLAN = {"sampler": "projection", "steps": 10, "corrector": False, "method": "ancestral"}


def _lmd(prior=None, **kw):
    kw = {"n_blocks": 4, "attempts": 4, "plan": PLAN, "distance": "mse", **kw}
    return LMD(stationary_gaussian(8) if prior is None else prior, **kw)


def _images(prior, n, seed):
    return prior.sample(n, torch.Generator().manual_seed(seed))


# -- Lift: the masks --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size,n_blocks", [(8, 4), (32, 8), ((8, 12), 4)])
def test_alternating_masks_are_complementary_pairs_covering_every_pixel(size, n_blocks):
    m = lmd_masks(size, "checkerboard_alt", n_blocks, attempts=6)
    h, w = (size, size) if isinstance(size, int) else size
    assert m.shape == (6, 1, h, w) and set(m.unique().tolist()) == {0.0, 1.0}
    for k in range(3):
        torch.testing.assert_close(m[2 * k + 1], 1 - m[2 * k])  # attempt 2k+1 = complement of 2k
        torch.testing.assert_close(m[2 * k], m[0])  # and every even attempt is the same mask
    hidden = (1 - m).sum(0)
    assert bool((hidden == 3).all()), "every pixel is hidden in exactly half of the attempts"
    # n_blocks × n_blocks blocks of equal size, alternating like a checkerboard.
    bh, bw = h // n_blocks, w // n_blocks
    blocks = m[0, 0].reshape(n_blocks, bh, n_blocks, bw)
    assert bool((blocks == blocks[:, :1, :, :1]).all()), "each block is all kept or all hidden"
    corner = blocks[:, 0, :, 0]
    rows, cols = torch.meshgrid(torch.arange(n_blocks), torch.arange(n_blocks), indexing="ij")
    torch.testing.assert_close(corner, ((rows + cols) % 2 == 0).float())  # (row + col) odd hidden in even attempts


def test_other_mask_kinds():
    cb = lmd_masks(8, "checkerboard", 4, attempts=3)
    assert bool((cb == cb[:1]).all()) and float(cb.mean()) == 0.5
    center = lmd_masks(8, "center", attempts=2)
    assert float((1 - center[0]).sum()) == 16 and float(center[0, 0, 3:5, 3:5].sum()) == 0


def test_detector_uses_its_masks_and_the_sampler_re_noises_the_kept_region_with_fresh_noise():
    """Inspect every step through a hook: on the pixels attempt r keeps, the iterate after the step is the
    image plus σ_next × fresh noise (RePaint / score_sde replacement), exactly the image at the end, and the
    noise is redrawn at each step (the standardized residuals of consecutive steps are uncorrelated)."""
    det = _lmd(attempts=4)
    x = _images(det.prior, 2, seed=0)
    keep = det.attempt_masks((8, 8)).bool()[:, 0]  # (R, H, W)
    residuals = []

    def hook(state):
        assert state.x.shape == (2 * 4, 1, 1, 8, 8)  # B·R rows, image-major, S = 1
        x_next = (state.x + state.prior_update + state.likelihood_update)[:, 0]  # (B·R, C, H, W)
        r = (x_next - x.repeat_interleave(4, 0)).reshape(2, 4, 1, 8, 8)
        kept = torch.stack([r[:, a, 0][:, keep[a]] for a in range(4)], 1)  # (B, R, kept pixels)
        residuals.append((state.sigma_next, kept))

    det.score(x, seed=[0, 1], hooks=[hook])
    assert len(residuals) == PLAN["steps"]
    for sigma_next, kept in residuals[:-1]:
        z = kept / sigma_next
        n = z.numel()  # 256 standard normals: the std is within 1 ± 4/sqrt(2n) (4 standard errors)
        assert abs(float(z.std()) - 1) < 4 / (2 * n) ** 0.5, (sigma_next, float(z.std()))
    last_sigma, last = residuals[-1]
    assert last_sigma == 0 and float(last.abs().max()) == 0.0, "the kept pixels are the image at σ = 0"
    corr = [float(torch.corrcoef(torch.stack([a.flatten() / sa, b.flatten() / sb]))[0, 1])
            for (sa, a), (sb, b) in zip(residuals[:-2], residuals[1:-1])]
    # 256 pairs per step, 8 steps: an independent redraw keeps |mean corr| well under 4/sqrt(256·8).
    assert abs(float(np.mean(corr))) < 4 / (256 * 8) ** 0.5, corr


# -- Detect: distances and aggregation --------------------------------------------------------------------


def test_score_is_the_median_over_attempts_and_mean_differs():
    x = _images(stationary_gaussian(8), 3, seed=1)
    med = _lmd(attempts=6).score(x, seed=[4, 5, 6])
    d = med.extras["distances"]
    assert d.shape == (3, 6) and bool((d > 0).all())
    torch.testing.assert_close(med.score, torch.from_numpy(np.median(d.numpy(), axis=1)))
    mean = _lmd(attempts=6, aggregate="mean").score(x, seed=[4, 5, 6])
    torch.testing.assert_close(mean.extras["distances"], d)  # same seeds → same attempts
    torch.testing.assert_close(mean.score, d.mean(1))
    assert not torch.allclose(mean.score, med.score)
    assert med.extras["aggregate"] == "median" and med.extras["attempts"] == 6


@pytest.mark.parametrize("distance", ["mse", "ssim"])
def test_distance_is_recorded_and_flipped_to_higher_is_more_shifted(distance):
    det = _lmd(distance=distance)
    x = _images(det.prior, 2, seed=2)
    s = det.score(x, seed=[0, 1])
    assert s.extras["distance"] == distance
    if distance == "ssim":
        assert s.extras["ssim_window"] == 7  # 11 does not fit 8×8: the largest odd window that does
        assert bool((s.extras["distances"] >= 0).all()) and bool((s.extras["distances"] <= 2).all())  # 1 − SSIM
    perfect = det._distances(x, x)[0]
    torch.testing.assert_close(perfect, torch.zeros(2, dtype=x.dtype))


def test_default_distance_is_lpips_only_when_it_runs_offline():
    det = LMD(stationary_gaussian(8), n_blocks=4, attempts=2, plan=PLAN)
    assert det.distance == ("lpips" if lpips_available() else "ssim")
    if not lpips_available():
        with pytest.raises(ValueError, match="lpips"):
            LMD(stationary_gaussian(8), n_blocks=4, distance="lpips")
        with pytest.raises(ValueError, match="lpips_weights"):
            LMD(stationary_gaussian(8), n_blocks=4, lpips_weights="/nonexistent/alexnet.pth")


def test_map_averages_the_error_over_the_attempts_that_hid_each_pixel_and_localizes():
    det = _lmd(attempts=4, aggregate="mean")
    x = _images(det.prior, 3, seed=3)
    x[:, :, 2:6, 2:6] += 3.0  # a block the prior cannot predict from its surroundings
    s = det.score(x, seed=[0, 1, 2])
    assert s.map.shape == (3, 8, 8) and bool((s.map >= 0).all())
    # Kept pixels are reproduced exactly and each pixel is hidden in half the attempts, so the map's mean is
    # twice the mean MSE (averaging over all attempts instead would give once).
    torch.testing.assert_close(s.map.mean((1, 2)), 2 * s.extras["distances"].mean(1))
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[2:6, 2:6] = True
    assert bool((s.map[:, inside].mean(1) > 3 * s.map[:, ~inside].mean(1)).all())


def test_reconstruction_merges_the_first_pair_from_the_attempt_that_hid_each_pixel():
    det = _lmd(attempts=4)
    x = _images(det.prior, 2, seed=4)
    final = {}
    det.score(x, seed=[0, 1], hooks=[lambda st: final.update(x=(st.x + st.prior_update + st.likelihood_update)[:, 0])])
    s = det.score(x, seed=[0, 1])
    rows = final["x"].reshape(2, 4, 1, 8, 8)
    hidden0 = det.attempt_masks((8, 8))[0] == 0
    assert s.extras["reconstruction"].shape == x.shape
    torch.testing.assert_close(s.extras["reconstruction"], torch.where(hidden0, rows[:, 0], rows[:, 1]))
    # hidden pixels are inpainted, not copied: the merge differs from the image
    assert not torch.allclose(s.extras["reconstruction"], x)


# -- Sign: a Gaussian-mixture component the prior does not contain ----------------------------------------


def _mixture(include_far: bool = False):
    cov = stationary_covariance(8, length_scale=1.5, variance=0.1)
    means = [torch.full((64,), -0.5), torch.full((64,), 0.5)]
    cols = torch.arange(8).repeat(8)
    far = {"offset": torch.full((64,), 2.0), "stripes": 0.6 * torch.where(cols % 2 == 0, 1.0, -1.0)}
    if include_far:
        means += [far["offset"], far["stripes"]]
    k = len(means)
    prior = GaussianMixturePrior(torch.full((k,), 1.0 / k), torch.stack(means).double(), torch.stack([cov] * k), (1, 8, 8))
    return prior, {name: GaussianPrior(m.double(), cov, (1, 8, 8)) for name, m in far.items()}, cov


@pytest.mark.parametrize("distance", ["mse", "ssim"])
@pytest.mark.parametrize("far_kind", ["offset", "stripes"])
def test_points_of_a_far_component_score_higher_than_the_trained_components(far_kind, distance):
    prior, far, _ = _mixture()
    g = torch.Generator().manual_seed(0)
    x_in, x_far = prior.sample(8, g), far[far_kind].sample(8, g)
    det = _lmd(prior, distance=distance)
    s_in = det.score(x_in, seed=list(range(8))).score
    s_far = det.score(x_far, seed=list(range(8))).score
    win = float((s_far[:, None] > s_in[None, :]).double().mean())
    assert win >= 0.95, (s_in, s_far)

    # Control: once the prior contains that component, its points are inpainted as well as the others'.
    full, _, _ = _mixture(include_far=True)
    s_known = _lmd(full, distance=distance).score(x_far, seed=list(range(8))).score
    assert float(s_known.median()) < 0.5 * float(s_far.median())


# -- NFE, seeds, batch independence -----------------------------------------------------------------------


@pytest.mark.parametrize("corrector", [False, True])
def test_nfe_is_images_times_attempts_times_one_run(corrector):
    prior = stationary_gaussian(8)
    plan = SamplingPlan("projection", steps=5, params={"corrector": corrector, "method": "ancestral"})
    x = _images(prior, 3, seed=5)
    one = plan.sample(prior, Inpainting(lmd_masks(8, "checkerboard_alt", 4, 2)[0]), x[:1], seed=[0])
    assert one.nfe == 5 * (2 if corrector else 1)
    det = LMD(prior, n_blocks=4, attempts=4, plan=plan, distance="mse")
    det.prior = counter = CountingDenoiser(prior)
    s = det.score(x, seed=[0, 1, 2])
    assert s.nfe == counter.nfe == 3 * 4 * one.nfe
    assert s.extras["nfe_per_image"] == 4 * one.nfe


def test_a_single_image_scores_the_same_in_any_batch():
    det = _lmd(attempts=4)
    x = _images(det.prior, 4, seed=6)
    together = det.score(x, seed=[10, 11, 12, 13])
    alone = det.score(x[2:3], seed=[12])
    for key in ("distances", "reconstruction"):
        torch.testing.assert_close(together.extras[key][2:3], alone.extras[key], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(together.score[2:3], alone.score, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(together.map[2:3], alone.map, rtol=1e-12, atol=1e-12)
    batched = score_batches(det, x, batch_size=3, seed=[10, 11, 12, 13])
    torch.testing.assert_close(batched.score, together.score, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(batched.extras["distances"], together.extras["distances"], rtol=1e-12, atol=1e-12)
    assert batched.nfe == together.nfe
    # the same image twice in a batch with two seeds: its attempts differ (the seed, not the row, decides)
    twice = det.score(torch.cat([x[:1], x[:1]]), seed=[1, 2])
    assert not torch.equal(twice.extras["distances"][0], twice.extras["distances"][1])


def test_attempt_seeds_depend_only_on_the_image_seed():
    a = attempt_seeds([5, 6], 3)
    assert len(a) == 6 and len(set(a)) == 6
    assert attempt_seeds([6], 3) == a[3:]


# -- construction -----------------------------------------------------------------------------------------


def test_registered_and_declared():
    assert get("detector", "lmd") is LMD
    det = LMD.example()
    assert det.input_kind == "images" and not det.needs_fit and det.samples_posterior and det.stochastic
    assert det.operator is None and det.attempts % 2 == 0
    default = LMD(stationary_gaussian(8), n_blocks=4)
    assert default.plan == DEFAULT_PLAN and default.attempts == 10 and default.aggregate == "median"
    assert default.plan.sampler == "projection" and default.plan.params["corrector"] is False
    partial = LMD(stationary_gaussian(8), n_blocks=4, plan={"steps": 7, "snr": 0.2}).plan  # refines the default
    assert partial == SamplingPlan("projection", 7, params={**DEFAULT_PLAN.params, "snr": 0.2})
    assert LMD(stationary_gaussian(8), n_blocks=4, plan={"sampler": "dps", "steps": 7}).plan.sampler == "dps"


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"attempts": 1}, "attempts"),
        ({"attempts": 5}, "even"),
        ({"attempts": 2.0}, "attempts"),
        ({"n_blocks": 3}, "divide"),
        ({"n_blocks": 0}, "n_blocks"),
        ({"masks": "random"}, "mask kind"),
        ({"distance": "l1"}, "distance"),
        ({"aggregate": "max"}, "aggregate"),
        ({"ssim_window": 4}, "ssim_window"),
        ({"ssim_window": 9, "distance": "ssim"}, "ssim_window"),
        ({"plan": {"sampler": "unconditional"}}, "measurement step"),
        ({"plan": {"sampler": "exact"}}, "one mask per"),
        ({"plan": {"sampler": "projection", "zeta": 1.0}}, "zeta"),
        ({"operator": Inpainting(torch.ones(8, 8))}, "operator must be None"),
    ],
)
def test_bad_parameters_raise_clear_errors(kw, match):
    kw = {"n_blocks": 4, **kw}
    operator = kw.pop("operator", None)
    with pytest.raises(ValueError, match=match):
        LMD(stationary_gaussian(8), operator, **kw)


def test_odd_attempts_are_fine_without_alternation():
    s = _lmd(masks="center", attempts=3).score(_images(stationary_gaussian(8), 2, seed=7), seed=[0, 1])
    assert s.extras["distances"].shape == (2, 3)
