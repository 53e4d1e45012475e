"""KLIP against its oracles: the KL in nats converges to the closed form; the map finds a shifted block."""

import pytest
import torch

from priorshift.analytic import stationary_gaussian
from priorshift.detectors import KLIP
from priorshift.diffusion import CountingDenoiser
from priorshift.operators import Identity, Inpainting, random_pixel_mask


@pytest.fixture
def inpainting_problem(gauss16):
    op = Inpainting(mask=random_pixel_mask(16, 0.5, generator=torch.Generator().manual_seed(1)).double(), noise_std=0.2)
    x = gauss16.sample(2, torch.Generator().manual_seed(0))
    return gauss16, op, op(x, seed=[3, 4])


@pytest.mark.slow
def test_kl_nats_converges_to_closed_form(inpainting_problem):
    # Exact likelihood steps (sample_exact), full window, one block: kl_nats estimates ½∫ g² E‖s_l‖² dt.
    # Measured relative errors (S = 256): about −5% at 50 steps, −1.5% at 200 (the ancestral sampler's
    # first-order bias; the log-σ quadrature itself is exact to 0.1% already at 25 steps). Monte-Carlo noise
    # of the S-sample average is about 1%.
    prior, op, y = inpainting_problem
    exact = prior.kl_posterior_prior(op, y)
    errors = []
    for steps in (50, 200):
        det = KLIP(prior, op, plan={"sampler": "exact", "steps": steps}, variant="whole_image", samples=256)
        errors.append(float(((det.score(y, seed=[0, 1]).kl_nats - exact) / exact).abs().mean()))
    assert errors[1] < 0.05, f"KL error {errors[1]:.3f} at 200 steps"
    assert errors[1] < errors[0], f"the error must shrink with the step count: {errors}"


@pytest.mark.slow
def test_kl_nats_with_the_default_pigdm_step_is_the_right_size():
    # ΠGDM's Gaussian likelihood uses an isotropic prior covariance; on this correlated prior it overestimates the
    # likelihood score. Measured KL ratios (ΠGDM without Jacobian, 100 steps, S = 64, two images): inpainting
    # 2.13/2.00, CT (8 views) 1.06/1.05, identity 1.79/1.90 — the right order of magnitude, never below the
    # truth by more than the exact sampler's own discretization bias. Bounds with margin: [0.9, 2.6].
    from priorshift.operators import ParallelBeamCT

    prior = stationary_gaussian(16, length_scale=2.0, variance=0.25)
    x = prior.sample(2, torch.Generator().manual_seed(0))
    for op in (Inpainting(mask=random_pixel_mask(16, 0.5, generator=torch.Generator().manual_seed(1)).double(), noise_std=0.2),
               ParallelBeamCT(image_size=16, n_views=8, noise_std=0.2), Identity(noise_std=0.2)):
        y = op(x, seed=[3, 4])
        ratio = KLIP(prior, op, plan={"steps": 50}, variant="whole_image", samples=64).score(y, seed=[0, 1]).kl_nats / prior.kl_posterior_prior(op, y)
        assert bool(((ratio > 0.9) & (ratio < 2.6)).all()), f"{type(op).__name__}: KL ratio {ratio.tolist()}"


@pytest.mark.parametrize("sampler, params", [("exact", {}), ("dps", {"jacobian": False}), ("dps", {"jacobian": True})])
def test_map_localizes_a_block_shift(sampler, params):
    # A +1 mean shift confined to one 4×4 block of images from a prior with sd 0.2 (a 5-sd shift).
    prior = stationary_gaussian(16, length_scale=2.0, variance=0.04)
    n = 40
    x = prior.sample(n, torch.Generator().manual_seed(0))
    x[:, :, 4:8, 8:12] += 1.0
    op = Identity(noise_std=0.1)
    y = op(x, seed=list(range(n)))
    det = KLIP(prior, op, plan={"sampler": sampler, "steps": 50, **params}, block=4, samples=2)
    scores = det.score(y, seed=list(range(n)))
    hits = (scores.map.flatten(1).argmax(1) == 1 * 4 + 2).float().mean()
    assert hits >= 0.95, f"the shifted block is the top block for {float(hits):.0%} of seeds"


def test_shape_sign_and_early_stop():
    prior = stationary_gaussian(16, length_scale=2.0, variance=0.04)
    x = prior.sample(12, torch.Generator().manual_seed(0))
    x[6:, :, 8:12, 8:12] -= 1.0  # the last six images carry a shift
    op = Inpainting(mask=random_pixel_mask(16, 0.6, generator=torch.Generator().manual_seed(2)).double(), noise_std=0.1)
    y = op(x, seed=list(range(12)))
    D = CountingDenoiser(prior)
    det = KLIP(D, op, plan={"sampler": "dps", "steps": 40, "jacobian": False}, window=(0.65, 0.85), block=4, samples=2)
    s = det.score(y, seed=list(range(12)))
    assert s.score.shape == (12,) and s.map.shape == (12, 4, 4) and s.kl_nats.shape == (12,)
    assert s.score[6:].mean() > 2 * s.score[:6].mean(), "higher = more shifted"
    assert s.score[6:].min() > s.score[:6].median(), "every shifted image scores above the typical clean one"
    assert s.nfe == D.nfe == 12 * 2 * 34, "sampling stops at the end of the window: round(0.85·40) = 34 steps"
    assert s.curve.shape == (12, 34) and s.extras["window_steps"] == (26, 34)
    full = KLIP(prior, op, plan={"sampler": "dps", "steps": 40, "jacobian": False}, variant="whole_image", samples=2).score(y, seed=0)
    assert full.nfe == 12 * 2 * 40 and full.map.shape == (12, 1, 1)
    assert torch.allclose(full.score, full.map.flatten(1)[:, 0])


@pytest.mark.parametrize("variant, map_shape", [("klip", (4, 4)), ("spatial_only", (4, 4)), ("temporal_only", (1, 1)), ("whole_image", (1, 1))])
def test_variants_and_batch_independence(inpainting_problem, variant, map_shape):
    prior, op, y = inpainting_problem
    det = KLIP(prior, op, plan={"steps": 20, "jacobian": False}, block=4, samples=2, variant=variant)
    both = det.score(y, seed=[5, 6])
    alone = det.score(y[1:], seed=[6])
    assert both.map.shape == (2, *map_shape)
    assert torch.allclose(both.map[1], alone.map[0], rtol=1e-10) and torch.allclose(both.kl_nats[1], alone.kl_nats[0], rtol=1e-10)


def test_reductions_coincide_for_one_sample(inpainting_problem):
    prior, op, y = inpainting_problem
    a = KLIP(prior, op, plan={"steps": 20}, block=4, samples=1, reduction="mean_of_squares").score(y, seed=[1, 2])
    b = KLIP(prior, op, plan={"steps": 20}, block=4, samples=1, reduction="square_of_mean").score(y, seed=[1, 2])
    assert torch.allclose(a.map, b.map)
    c = KLIP(prior, op, plan={"steps": 20}, block=4, samples=4, reduction="square_of_mean").score(y, seed=[1, 2])
    d = KLIP(prior, op, plan={"steps": 20}, block=4, samples=4, reduction="mean_of_squares").score(y, seed=[1, 2])
    assert bool((c.map <= d.map + 1e-12).all()), "‖E u‖² ≤ E ‖u‖² (Jensen)"


def test_kl_normalization_map_sums_to_kl(inpainting_problem):
    prior, op, y = inpainting_problem
    s = KLIP(prior, op, plan={"sampler": "exact", "steps": 20}, variant="spatial_only", block=4, samples=2, normalization="kl").score(y, seed=[0, 1])
    n_steps = s.extras["window_steps"][1] - s.extras["window_steps"][0]
    assert torch.allclose(s.map.flatten(1).sum(1) * n_steps, s.kl_nats, rtol=1e-10)


def test_bad_input(inpainting_problem):
    prior, op, y = inpainting_problem
    with pytest.raises(ValueError, match="divide"):
        KLIP(prior, op, block=5).score(y)
    for window in [(0.5, 0.5), (-0.1, 0.5), (0.2, 1.2), (0.9, 0.1)]:
        with pytest.raises(ValueError, match="window"):
            KLIP(prior, op, window=window)
    with pytest.raises(ValueError, match="selects no step"):
        KLIP(prior, op, plan={"steps": 4}, window=(0.5, 0.6))
    with pytest.raises(ValueError, match="samples"):
        KLIP(prior, op, samples=0)
    with pytest.raises(ValueError, match="shape"):
        KLIP(prior, op).score(y[..., :8])
    with pytest.raises(ValueError, match="NaN"):
        KLIP(prior, op).score(torch.full_like(y, float("nan")))
    with pytest.raises(ValueError, match="unknown sampler"):
        KLIP(prior, op, plan={"sampler": "ddim"})
    with pytest.raises(ValueError, match="variant"):
        KLIP(prior, op, variant="spatial")


def test_step_maps_reproduce_other_windows_and_blocks(inpainting_problem):
    # One full run with per-step maps at block 2 gives KLIP's map for any window and any coarser block.
    from priorshift.detectors import aggregate_step_maps

    prior, op, y = inpainting_problem
    kw = dict(plan={"steps": 20, "jacobian": False}, samples=2)
    trace = KLIP(prior, op, block=2, variant="spatial_only", keep_step_maps=True, **kw).score(y, seed=[0, 1])
    assert trace.step_maps.shape == (2, 20, 8, 8)
    direct = KLIP(prior, op, block=8, window=(0.25, 0.6), **kw).score(y, seed=[0, 1])
    rebuilt = aggregate_step_maps(trace.step_maps, direct.extras["window_steps"], pool=4)
    assert torch.allclose(rebuilt, direct.map, rtol=1e-5)
    one = aggregate_step_maps(trace.step_maps, (0, 20), pool=0)
    assert torch.allclose(one.flatten(1)[:, 0], trace.map.flatten(1).sum(1), rtol=1e-5)


def test_spread_score_from_the_detector_and_from_a_trace(inpainting_problem):
    # score="spread": the window's block energy over the S samples' spread there (+ floor · its image mean), the same
    # whether KLIP computes it or a bench trace rebuilds it; the spread is the unbiased per-block variance of x̂0.
    from priorshift.bench.klip_eval import Setting, score_set
    from priorshift.detectors.klip import spread_normalized

    prior, op, y = inpainting_problem
    kw = dict(plan={"steps": 12}, samples=3)
    direct = KLIP(prior, op, block=4, window=(0.25, 0.75), score="spread", spread_floor=0.2, **kw).score(y, seed=[0, 1])
    energy = KLIP(prior, op, block=4, window=(0.25, 0.75), **kw).score(y, seed=[0, 1])
    assert torch.allclose(direct.extras["energy_map"], energy.map)
    assert torch.allclose(direct.map, spread_normalized(energy.map, direct.extras["spread_map"], 0.2))
    ref = direct.extras["spread_map"].flatten(1).mean(1).reshape(-1, 1, 1)
    assert torch.allclose(direct.map, energy.map / (direct.extras["spread_map"] + 0.2 * ref))
    trace = score_set(prior, op, y, seed=[0, 1], base_block=2, **kw)
    rebuilt = Setting((0.25, 0.75), 4, score="spread", spread_floor=0.2).maps(trace)
    assert torch.allclose(rebuilt, direct.map, rtol=1e-4)
    recorded = []
    KLIP(prior, op, block=16, window=(0.0, 1.0), **kw).score(y, seed=[0, 1], hooks=[lambda st: recorded.append(st.x0_hat.var(1).sum((1, 2, 3)))])
    whole = KLIP(prior, op, block=16, window=(0.0, 1.0), **kw).score(y, seed=[0, 1]).extras["spread_map"].flatten(1)[:, 0]
    assert torch.allclose(whole, torch.stack(recorded).mean(0).double(), rtol=1e-6)
    with pytest.raises(ValueError, match="samples >= 2"):
        KLIP(prior, op, score="spread", samples=1)
    with pytest.raises(ValueError, match="score"):
        KLIP(prior, op, score="ratio")


def test_kl_quadrature_alone_is_accurate_at_few_steps(gauss8):
    # Feed the accumulator steps whose likelihood updates carry the exact integrand: for a Gaussian prior,
    # E‖s_l‖² at σ has a closed form, and a step moves x by g²Δt·s_l. The ln-σ trapezoid then integrates
    # ½ ∫ E‖s_l‖² dσ² to well under 1% with only 25 steps (a left Riemann sum in σ² is about −34% there).
    from priorshift.detectors import KLIPAccumulator
    from priorshift.diffusion import karras_sigmas
    from priorshift.types import StepState

    prior = gauss8
    op = Inpainting(mask=random_pixel_mask(8, 0.5, generator=torch.Generator().manual_seed(1)).double(), noise_std=0.2)
    y = op(prior.sample(1, torch.Generator().manual_seed(0)), seed=[3])
    kl = float(prior.kl_posterior_prior(op, y)[0])
    mu_y, S_y = prior.posterior(op, y)
    mu_y, mu, S, I = mu_y.reshape(-1), prior.mean[0], prior.cov, torch.eye(64, dtype=torch.float64)

    def integrand(s):  # E_{x ~ p_σ(x|y)} ‖(D(x, σ | y) − D(x, σ)) / σ²‖²
        W, Wy = S @ torch.linalg.inv(S + s * s * I), S_y @ torch.linalg.inv(S_y + s * s * I)
        a, B = (I - W) @ (mu_y - mu), Wy - W
        return float(a @ a + torch.trace(B @ (S_y + s * s * I) @ B.T)) / s**4

    sig = karras_sigmas(25, 0.002, 80.0).tolist()
    acc = KLIPAccumulator(block=8, k0=0, k1=25, normalization="g", sigma_power=0.5, reduction="mean_of_squares", stage=None)
    for i in range(25):
        s, sn = sig[i], sig[i + 1]
        u = torch.zeros(1, 1, 1, 8, 8, dtype=torch.float64)
        u[..., 0, 0] = (s**2 - sn**2) * integrand(s) ** 0.5  # ‖Δx‖ = g²Δt · sqrt(E‖s_l‖²)
        z = torch.zeros_like(u)
        acc(StepState(i=i, n_steps=25, sigma=s, sigma_next=sn, x=z, x0_hat=z, prior_update=z, likelihood_update=u,
                      g=((s**2 - sn**2) / (s - sn)) ** 0.5, dt=s - sn))
    assert abs(float(acc.kl[0]) / kl - 1) < 0.01


def test_plan_stage_and_accumulator_validation(inpainting_problem):
    from priorshift.detectors import KLIPAccumulator
    from priorshift.samplers import SamplingPlan

    prior, op = inpainting_problem[:2]
    with pytest.raises(ValueError, match="no likelihood step"):
        KLIP(prior, op, plan={"sampler": "unconditional"})
    with pytest.raises(ValueError, match="corrector, predictor, not 'dps'"):
        KLIP(prior, op, plan={"sampler": "projection"}, stage="dps")
    assert KLIP(prior, op, plan={"sampler": "projection"}, stage="corrector").stage == "corrector"
    with pytest.raises(ValueError, match="takes no parameter 'zeta'"):
        KLIP(prior, op, plan=SamplingPlan("projection", params={"zeta": 0.1}))
    with pytest.raises(ValueError, match="normalization"):
        KLIPAccumulator(block=4, k0=0, k1=2, normalization="sigma", sigma_power=0.5, reduction="mean_of_squares", stage=None)
    # The schedule is clamped to the prior's own σ range in one place (the plan).
    prior.sigma_max = 10.0
    try:
        assert float(KLIP(prior, op).sigmas[0]) == pytest.approx(10.0)
    finally:
        prior.sigma_max = 80.0


def _synthetic_trace(n: int, signal_steps: slice | None, *, n_steps: int = 10, seed: int = 0, spread: bool = False):
    # Per-step 2-px block maps of a 4×4 image: noise, plus (OOD) a bump in block (0, 0) at the given steps.
    from priorshift.bench.klip_eval import Trace

    g = torch.Generator().manual_seed(seed)
    maps = torch.rand(n, n_steps, 2, 2, generator=g)
    if signal_steps is not None:
        maps[:, signal_steps, 0, 0] += 2.0
    spread_maps = 0.5 + torch.rand(n, n_steps, 2, 2, generator=g) if spread else None
    return Trace(maps, 2, n_steps, 1.0, 0.0, torch.zeros(n), torch.zeros(n, 1, 4, 4), torch.ones(n_steps + 1), spread_maps)


def test_tune_joint_maximizes_the_mean_tuning_auroc_over_shifts():
    # Shift A shows in the first half of the steps, shift B in the second: each alone is tuned to its own half,
    # jointly the window must span both; one pair reproduces tune(); mixed step counts are refused.
    from priorshift.bench.klip_eval import evaluate, tune, tune_joint

    id_a, ood_a = _synthetic_trace(12, None, seed=1), _synthetic_trace(12, slice(0, 5), seed=2)
    id_b, ood_b = _synthetic_trace(12, None, seed=3), _synthetic_trace(12, slice(5, 10), seed=4)
    alone_a, res_a = tune(id_a, ood_a, None, None, blocks=(2, 4))
    assert alone_a.steps(10)[1] <= 5 and res_a["auroc"] == 1.0
    one, res_one = tune_joint([(id_a, ood_a)], blocks=(2, 4))
    assert one == alone_a and res_one["auroc"] == res_a["auroc"]
    joint, res = tune_joint([(id_a, ood_a), (id_b, ood_b)], blocks=(2, 4))
    k0, k1 = joint.steps(10)
    assert k0 < 5 <= k1 - 1 and res["auroc"] == pytest.approx(sum(res["aurocs"]) / 2)
    assert res["aurocs"] == [evaluate(joint, id_a, ood_a)["auroc"], evaluate(joint, id_b, ood_b)["auroc"]]
    with pytest.raises(ValueError, match="step counts"):
        tune_joint([(id_a, ood_a), (_synthetic_trace(4, None, n_steps=8), _synthetic_trace(4, None, n_steps=8))], blocks=(2,))
    with pytest.raises(ValueError, match="at least one"):
        tune_joint([], blocks=(2,))


def test_foreground_scores_only_the_blocks_with_tissue(inpainting_problem):
    # foreground: the image score is the max over the blocks where the reconstruction (where sampling stopped) has a
    # pixel above the threshold; the map is 0 elsewhere, and equals the unrestricted map there.
    from priorshift.detectors.klip import tissue_blocks

    prior, op, y = inpainting_problem
    kw = dict(plan={"steps": 12}, samples=2, block=4, window=(0.25, 0.75), score="spread")
    free = KLIP(prior, op, **kw).score(y, seed=[0, 1])
    thr = float(free.extras["reconstruction"].median())  # about half of the image counts as "tissue"
    kept = KLIP(prior, op, foreground=thr, **kw).score(y, seed=[0, 1])
    tissue = tissue_blocks(kept.extras["reconstruction"], 4, thr)
    assert tissue.any() and not tissue.all()
    torch.testing.assert_close(kept.map, torch.where(tissue, free.map, torch.zeros_like(free.map)))
    torch.testing.assert_close(kept.score, torch.where(tissue, free.map, torch.full_like(free.map, -1)).flatten(1).max(1).values)
    assert tissue_blocks(torch.full((1, 1, 8, 8), -1.0), 4, -0.9).all(), "no tissue anywhere: every block counts"
    with pytest.raises(ValueError, match="foreground"):
        KLIP(prior, op, foreground=1.5)


def test_tune_searches_the_spread_floor():
    # With score="spread" allowed, every floor in `floors` is a candidate. Here the OOD bump (energy ×4) comes
    # with exactly as much extra posterior spread, so a tiny floor divides it away and only a large floor detects.
    from priorshift.bench.klip_eval import Setting, evaluate, tune

    id_t, ood_t = _synthetic_trace(32, None, seed=5, spread=True), _synthetic_trace(32, None, seed=6, spread=True)
    id_t.spread_maps = torch.ones_like(id_t.step_maps)
    ood_t.step_maps[:, :, 0, 0] *= 4.0
    ood_t.spread_maps = torch.ones_like(ood_t.step_maps)
    ood_t.spread_maps[:, :, 0, 0] = 4.0
    full = {f: evaluate(Setting((0.0, 1.0), 2, score="spread", spread_floor=f), id_t, ood_t)["auroc"] for f in (1e-6, 2.0)}
    assert full[1e-6] < 0.75 and full[2.0] > 0.95
    best, res = tune(id_t, ood_t, None, None, blocks=(2,), scores=("spread",), floors=(1e-6, 2.0))
    assert best.score == "spread" and best.spread_floor == 2.0 and res["auroc"] >= full[2.0]
    energy, _ = tune(id_t, ood_t, None, None, blocks=(2,), scores=("energy",), floors=(1e-6, 2.0))
    assert energy.score == "energy"


@pytest.mark.parametrize("normalization, power", [("sigma_power", 1.0), ("sigma_power", -0.5), ("none", 0.5)])
def test_trace_rebuilds_other_step_normalizations(inpainting_problem, normalization, power):
    # A trace recorded with normalization="g" gives the map of any σ-power (or no) normalization exactly, and a
    # Setting's klip_kwargs() run through KLIP reproduce what the Setting computes from the trace.
    from priorshift.bench.klip_eval import Setting, score_set

    prior, op, y = inpainting_problem
    kw = dict(plan={"steps": 16}, samples=2)
    trace = score_set(prior, op, y, seed=[0, 1], base_block=2, **kw)
    setting = Setting((0.25, 0.75), 4, score="spread", spread_floor=0.3, normalization=normalization, sigma_power=power)
    direct = KLIP(prior, op, **setting.klip_kwargs(), **kw).score(y, seed=[0, 1])
    assert direct.extras["window_steps"] == setting.steps(16)
    assert torch.allclose(setting.maps(trace), direct.map, rtol=1e-4)
    assert not torch.allclose(Setting((0.25, 0.75), 4, score="spread", spread_floor=0.3).maps(trace), direct.map, rtol=1e-2)
    with pytest.raises(ValueError, match="rebuilt"):
        Setting((0.25, 0.75), 4, normalization="kl").maps(trace)
