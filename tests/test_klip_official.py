"""KLIP.official against the official code's own outputs (tests/fixtures/klip_official_ddpm.*).

The fixture was made by tests/fixtures/make_klip_official_fixture.py, which runs the official voilalab/KLIP DDPM
backend (their ``_sample_one`` and ``klip_score_map``) on a tiny random diffusers UNet and records its trajectory,
random draws, normalised per-step updates, per-step maps, window map and max. Here the same UNet is rebuilt from its
config and seed, the official draws are replayed through priorshift's sampler (their x_T, then their step noise),
and ``KLIP.official`` must reproduce every recorded number.

Tolerance 1e-5 relative: both runs are float32 (one ulp ≈ 6e-8 relative); measured, the trajectories, updates and
maps agree to a few 1e-6 over the 17 steps run. (Had the weight ``β_t/ᾱ_t`` been recovered from diffusers' float32
``ᾱ`` instead of read from its ``betas``, it alone would be up to 7.1e-6 off on these steps, 1.05e-5 on one block.)
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from priorshift.detectors import KLIP
from priorshift.detectors.klip_official import official_settings
from priorshift.diffusion.schedules import ddpm_step_weights
from priorshift.operators import GaussianBlur
from priorshift.rng import PerImageGenerator

diffusers = pytest.importorskip("diffusers")

FIXTURE = Path(__file__).parent / "fixtures" / "klip_official_ddpm"
RTOL = 1e-5


@pytest.fixture(scope="module")
def official():
    meta = json.loads(FIXTURE.with_suffix(".json").read_text())
    data = dict(np.load(FIXTURE.with_suffix(".npz")))
    return meta, data


@pytest.fixture(scope="module")
def problem(official):
    from priorshift.diffusion import from_diffusers

    meta, data = official
    torch.manual_seed(meta["unet_seed"])  # the fixture's network: diffusers' default init under this seed
    unet = diffusers.UNet2DModel(**meta["unet_config"]).eval()
    flat = torch.cat([p.detach().double().flatten() for p in unet.parameters()])
    checksum = np.array([float(flat.sum()), float(flat.pow(2).sum())])
    assert np.allclose(checksum, meta["unet_param_checksum"], rtol=1e-9), (
        "the UNet rebuilt from the fixture's config and seed is not the one the fixture was made with (torch or diffusers "
        "changed its init); re-run tests/fixtures/make_klip_official_fixture.py")
    prior = from_diffusers(unet, diffusers.DDPMScheduler(num_train_timesteps=1000))
    operator = GaussianBlur(kernel_size=meta["blur_ksize"], sigma=meta["blur_sigma"])
    return prior, operator


class Replay(PerImageGenerator):
    """One image whose standard-normal draws are given: the official x_T, then the noise of each stochastic step."""

    def __init__(self, draws):
        super().__init__([0])
        self.draws = [torch.from_numpy(d) for d in draws]

    def randn(self, shape, dtype=torch.float32):
        z = self.draws.pop(0)
        assert tuple(z.shape) == tuple(shape), f"the sampler asked for {tuple(shape)}, the next official draw is {tuple(z.shape)}"
        return z.to(dtype)[None]


def run(official, problem, **changes):
    """KLIP.official on the fixture's problem with the official draws; ``changes`` alter the sampler's params or,
    for ``normalization``, the detector. Returns (scores, per-step states' (x, likelihood update), detector)."""
    meta, data = official
    prior, operator = problem
    kw = official_settings("ddpm", steps=meta["num_inference_steps"], samples=meta["num_samples"], block=meta["block_size"],
                           zeta=meta["dps_scale"], keep_step_maps=True)
    T = meta["num_inference_steps"]
    kw["window"] = (meta["t_start"] / T, meta["t_end"] / T)
    if "normalization" in changes:
        kw["normalization"] = changes.pop("normalization")
    kw["plan"]["params"].update(changes)
    det = KLIP(prior, operator, **kw)
    states = []
    seed = Replay([data["trajectory_vp"][0], *data["step_noise"]])
    scores = det.score(torch.from_numpy(data["y"]), seed=seed, hooks=[lambda s: states.append((s.x[0].clone(), s.likelihood_update[0].clone()))])
    return scores, states, det


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_official_preset_reproduces_the_official_code(official, problem):
    meta, data = official
    scores, states, det = run(official, problem)
    k0, k1 = meta["t_start"], meta["t_end"]
    assert det.window_steps == (k0, k1) and len(states) == k1  # sampling stops at the window's end

    # The schedule is their timesteps; the trajectory (VE here, VP there) is theirs at every step.
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000)
    sched.set_timesteps(meta["num_inference_steps"])
    assert sched.timesteps.tolist() == data["timesteps"].tolist()
    sqrt_abar = sched.alphas_cumprod[data["timesteps"]].double().sqrt().numpy()
    for k, (x, _) in enumerate(states):
        assert rel(x.numpy() * sqrt_abar[k], data["trajectory_vp"][k]) < RTOL, f"trajectory at step {k}"

    # Each step's normalised update, per-step map, the window's map and its max.
    weights = ddpm_step_weights(det.prior, det.sigmas).numpy()
    for k, (_, u) in enumerate(states):
        assert rel(u.numpy() / weights[k], data["normalized_updates"][k]) < RTOL, f"normalised update at step {k}"
    step_maps = scores.extras["step_maps"][0].numpy()
    assert rel(step_maps, data["step_maps"][:k1]) < RTOL
    assert np.abs(step_maps / data["step_maps"][:k1] - 1).max() < RTOL  # every block, not only the largest
    assert np.abs(scores.map[0].numpy() / data["map"] - 1).max() < RTOL
    assert abs(float(scores.score[0]) / float(data["max"]) - 1) < RTOL


@pytest.mark.parametrize(
    "change, lo",
    [
        ({"normalization": "g"}, 0.5),  # priorshift's default weight: c_k = β_t/(ᾱ_t(σ_k + σ_{k+1})) ≠ 1, 13× range at T = 20
        ({"residual_norm": "per_sample"}, 1e-2),  # priorshift's default ‖r‖ (measured: map 2.6e-2 off)
        ({"clip_x0": False}, 0.1),  # no x̂0 clipping (measured: 0.75)
        ({"init": "ve"}, 3e-5),  # x_T = σ_0 n, smaller than theirs by 1/(2σ_0²) = 5.3e-5 (σ_0 = 97); the map barely moves
    ],
)
def test_each_official_detail_matters(official, problem, change, lo):
    # The parity above can fail: with any one of priorshift's own choices back, the map or the trajectory leaves it.
    meta, data = official
    scores, states, _ = run(official, problem, **dict(change))
    map_error = np.abs(scores.map[0].numpy() / data["map"] - 1).max()
    x_T_error = rel(states[0][0].numpy() * float(diffusers.DDPMScheduler().alphas_cumprod[int(data["timesteps"][0])].double().sqrt()), data["trajectory_vp"][0])
    assert max(map_error, x_T_error) > max(lo, 3 * RTOL)


def test_official_preset_refuses_what_it_fixes(official, problem):
    prior, operator = problem
    with pytest.raises(ValueError, match="official preset sets normalization"):
        KLIP.official(prior, operator, normalization="g")
    with pytest.raises(ValueError, match="unknown official KLIP backend 'padis'"):
        KLIP.official(prior, operator, backend="padis")
    det = KLIP.official(prior, operator, steps=20)
    assert det.plan.schedule == "ddpm" and det.normalization == "ddpm" and det.samples == 8 and det.block == 1
    assert det.window_steps == (13, 17)
