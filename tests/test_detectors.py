"""The detector contract, over every registered detector (``names("detector")``).

Each detector's ``example()`` is a tiny instance on an analytic prior (and operator, for measurement
detectors). A detector that lands later passes these tests without editing them.

Shifts used here, all of low prior density: a block of the image pushed far off (+6 prior standard
deviations), the measurement of an in-distribution image scaled ×5, and white noise (N(0, 1) images, twice
the prior's standard deviation and no spatial correlation). Not constant or very smooth images: those can be
*more* likely than typical samples (the likelihood paradox), so a KL- or likelihood-type score may rank
them low by construction.
"""

import pytest
import torch

from priorshift.detectors import Detector, NotFittedError, score_batches
from priorshift.diffusion import CountingDenoiser
from priorshift.registry import get, names
from priorshift.types import DetectorProtocol
from priorshift.types import Scores

DETECTORS = names("detector")
N = 6

# Known failures of the contract, each with its reason; strict, so a case that starts passing turns red and
# its entry must go.
KNOWN_FAILURES: dict[tuple[str, str], str] = {}


def _example(name):
    det = get("detector", name).example()
    if det.needs_fit:
        det.fit(_inputs(det, _images(det, 12, seed=100), seed=100), seed=0)
    return det


def _images(det, n, seed, shift=0.0):
    x = det.prior.sample(n, torch.Generator().manual_seed(seed))
    if shift:
        h, w = x.shape[-2:]
        sd = float(x.std())
        x[..., h // 4 : h // 2 + h // 4, w // 4 : w // 2 + w // 4] += shift * sd
    return x


def _inputs(det, x, seed):
    """What the detector scores: the images themselves, or their noisy measurements."""
    if det.input_kind == "images":
        return x
    return det.operator(x, seed=list(range(seed, seed + x.shape[0])))


def _pairwise_win_rate(high, low):
    return float((high[:, None] > low[None, :]).double().mean())


def _known(request, name, case):
    reason = KNOWN_FAILURES.get((name, case))
    if reason:
        request.applymarker(pytest.mark.xfail(reason=reason, strict=True))


@pytest.fixture(params=DETECTORS)
def name(request):
    return request.param


def test_registry_is_not_empty():
    assert "klip" in DETECTORS


def test_declarations(name):
    cls = get("detector", name)
    det = cls.example()
    assert isinstance(det, Detector) and isinstance(det, DetectorProtocol)
    assert det.input_kind in ("measurements", "images")
    assert det.input_kind == "images" or det.operator is not None
    assert not det.is_fitted(), "__init__ stores parameters; it must not fit or run anything"


def test_shapes(name):
    det = _example(name)
    x = _images(det, 3, seed=0)
    s = det.score(_inputs(det, x, seed=0), seed=[0, 1, 2])
    assert isinstance(s, Scores)
    assert s.score.shape == (3,) and bool(torch.isfinite(s.score).all())
    assert s.map is None or (s.map.ndim == 3 and s.map.shape[0] == 3)
    assert isinstance(s.nfe, int) and s.nfe >= 0
    for key, value in s.extras.items():
        if isinstance(value, torch.Tensor) and value.ndim >= 1 and key != "sigmas":
            assert value.shape[0] == 3, f"per-image extra {key!r} must lead with the batch axis, got {tuple(value.shape)}"


def test_higher_score_on_a_block_pushed_far_off(name):
    det = _example(name)
    x = _images(det, N, seed=1)
    clean = det.score(_inputs(det, x, seed=10), seed=list(range(N))).score
    shifted = det.score(_inputs(det, _images(det, N, seed=1, shift=6.0), seed=10), seed=list(range(N))).score
    assert float((shifted > clean).double().mean()) >= 5 / 6, f"paired: the shift must raise the score ({clean} → {shifted})"


def test_batch_independence(name):
    det = _example(name)
    data = _inputs(det, _images(det, 3, seed=2), seed=20)
    together = det.score(data, seed=[7, 8, 9])
    alone = det.score(data[2:3], seed=[9])
    torch.testing.assert_close(together.score[2:], alone.score, rtol=1e-6, atol=1e-9)
    if together.map is not None:
        torch.testing.assert_close(together.map[2:], alone.map, rtol=1e-6, atol=1e-9)
    batched = score_batches(det, data, batch_size=2, seed=[7, 8, 9])
    torch.testing.assert_close(batched.score, together.score, rtol=1e-6, atol=1e-9)
    assert batched.nfe == together.nfe


def test_seeds(name):
    det = _example(name)
    data = _inputs(det, _images(det, 2, seed=3), seed=30)
    a = det.score(data, seed=[1, 2]).score
    b = det.score(data, seed=[1, 2]).score
    c = det.score(data, seed=[3, 4]).score
    assert torch.equal(a, b), "same seed → same score"
    if det.stochastic:
        assert not torch.equal(a, c), "a stochastic detector must use its seed"
    else:
        assert torch.equal(a, c), "a detector declared deterministic must not depend on the seed"


def test_bad_input_fails_before_any_network_call(name):
    det = _example(name)
    data = _inputs(det, _images(det, 2, seed=4), seed=40)
    det.prior = counter = CountingDenoiser(det.prior)
    for bad in (torch.full_like(data, float("nan")), data.clone().index_fill_(-1, torch.tensor([0]), float("inf"))):
        with pytest.raises(ValueError, match="NaN|Inf"):
            det.score(bad)
    with pytest.raises(ValueError, match="shape|dimension|size"):
        det.score(data[..., :-1])
    with pytest.raises(ValueError):
        det.score(data.numpy())
    assert counter.nfe == 0, "input must be validated before the network runs"


def test_not_fitted(name):
    det = get("detector", name).example()
    data = _inputs(det, _images(det, 2, seed=5), seed=50)
    if det.needs_fit:
        with pytest.raises(NotFittedError, match="fit"):
            det.score(data)
    else:
        assert det.fit(data) is det and not det.is_fitted()


def test_hooks_reach_the_sampler(name):
    det = _example(name)
    data = _inputs(det, _images(det, 1, seed=6), seed=60)
    calls = []
    if det.samples_posterior:
        det.score(data, seed=[0], hooks=[calls.append])
        assert calls, "extra hooks must be called by the detector's sampler"
    else:
        with pytest.raises(ValueError, match="hooks"):
            det.score(data, seed=[0], hooks=[calls.append])


@pytest.mark.parametrize("case", ["scaled", "white_noise"])
def test_gross_shifts_of_low_density_score_higher(name, case, request):
    _known(request, name, case)
    det = _example(name)
    x = _images(det, N, seed=7)
    clean = det.score(_inputs(det, x, seed=70), seed=list(range(N))).score
    if case == "scaled":
        if det.input_kind == "images":
            shifted = 5.0 * x
        else:
            shifted = 5.0 * _inputs(det, x, seed=70)
    else:
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(8), dtype=x.dtype)
        shifted = _inputs(det, noise, seed=80)
    high = det.score(shifted, seed=list(range(N))).score
    assert _pairwise_win_rate(high, clean) >= 0.9, f"{case}: {high} vs in-distribution {clean}"
