"""Contract tests over every registered operator (built through ``example``), plus per-operator checks."""

from __future__ import annotations

import math

import pytest
import torch

from priorshift import registry
from priorshift.operators import MRI, DeepinvOperator, Downsample, GaussianBlur, Inpainting, ParallelBeamCT
from priorshift.operators import adjoint_error, box_mask, cartesian_mask, checkerboard_mask, make_operator, radon_matrix
from priorshift.operators import random_block_mask, random_pixel_mask

NAMES = registry.names("operator")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _randn(shape, dtype=torch.float64, seed=0, device="cpu"):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)


def _setup(name, size=16, channels=1, batch=2, dtype=torch.float64, device="cpu"):
    op = registry.get("operator", name).example(image_size=size, channels=channels)
    x = _randn((batch, channels, size, size), dtype, 0, device)
    y = _randn(tuple(op.A(x).shape), dtype, 1, device)
    return op, x, y


def test_all_operators_registered():
    assert set(NAMES) >= {"identity", "inpainting", "blur", "downsample", "ct", "mri"}
    assert {"identity", "inpainting", "downsample", "mri"} <= {n for n in NAMES if registry.get("operator", n).pinv_is_exact}


# -- contracts over the registry ------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size,channels", [(16, 1), (16, 3), (32, 1), (32, 3)])
def test_adjoint(name, size, channels):
    op, x, y = _setup(name, size, channels)
    assert adjoint_error(op, x, y) < 1e-6


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("device", DEVICES)
def test_shapes_dtype_device(name, dtype, device):
    op, x, y = _setup(name, channels=3, dtype=dtype, device=device)
    for out, shape in ((op.A(x), y.shape), (op(x, seed=0), y.shape), (op.A_adjoint(y), x.shape), (op.A_pinv(y), x.shape)):
        assert out.shape == shape and out.dtype == dtype and out.device == x.device
    assert op.A(x).shape[:2] == x.shape[:2]


@pytest.mark.parametrize("name", NAMES)
def test_batch_consistency(name):
    op, x, y = _setup(name, batch=3)
    Ax, Aty = op.A(x), op.A_adjoint(y)
    for b in range(3):
        torch.testing.assert_close(op.A(x[b : b + 1]), Ax[b : b + 1], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(op.A_adjoint(y[b : b + 1]), Aty[b : b + 1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_noise(name):
    op, x, _ = _setup(name, channels=3, batch=3)
    op.noise_std = 0.0
    torch.testing.assert_close(op(x, seed=[1, 2, 3]), op.A(x))
    op.noise_std = 0.1
    seeds = [11, 22, 33]
    y = op(x, seed=seeds)
    r = y - op.A(x)
    # std of n Gaussian draws has relative sd ≈ 1/sqrt(2n); allow 5 of those.
    assert abs(float(r.std()) / 0.1 - 1) < 5 / math.sqrt(2 * r.numel())
    assert torch.equal(op(x, seed=seeds), y)  # reproducible
    torch.testing.assert_close(op(x[1:2], seed=[22]), y[1:2], rtol=1e-10, atol=1e-12)  # batch-independent
    assert not torch.equal(op(x, seed=[1, 2, 3]), y)


@pytest.mark.parametrize("name", NAMES)
def test_autograd_through_A(name):
    op, x, _ = _setup(name)
    x = x.clone().requires_grad_(True)
    op.A(x).square().sum().backward()  # d/dx ‖A x‖² = 2 Aᵀ A x
    torch.testing.assert_close(x.grad, 2 * op.A_adjoint(op.A(x.detach())))


@pytest.mark.parametrize("name", NAMES)
def test_bad_input(name):
    op, x, y = _setup(name)
    with pytest.raises(ValueError, match="x must have"):
        op.A(x[0])
    with pytest.raises(ValueError, match="y must have"):
        op.A_adjoint(y[None])
    with pytest.raises(ValueError, match="y must have"):
        op.A_pinv(y[None])
    with pytest.raises(ValueError, match="x must be a torch.Tensor"):
        op.A(x.numpy())
    for bad in (float("nan"), float("inf")):
        xb, yb = x.clone(), y.clone()
        xb.view(-1)[3] = bad
        yb.view(-1)[3] = bad
        with pytest.raises(ValueError, match="x contains 1 NaN/Inf"):
            op(xb)
        with pytest.raises(ValueError, match="y contains 1 NaN/Inf"):
            op.A_adjoint(yb)
        with pytest.raises(ValueError, match="y contains 1 NaN/Inf"):
            op.A_pinv(yb)


def test_make_operator():
    op = make_operator("downsample", factor=4, noise_std=0.2)
    assert isinstance(op, Downsample) and op.factor == 4 and op.noise_std == 0.2
    with pytest.raises(ValueError, match="unknown operator 'radon'; choose one of: .*ct"):
        make_operator("radon")


# -- per-operator checks ---------------------------------------------------------------------------------
EXACT = [n for n in NAMES if registry.get("operator", n).pinv_is_exact]


@pytest.mark.parametrize("name", EXACT)
@pytest.mark.parametrize("size", [16, 15])
def test_exact_pseudo_inverse(name, size):
    """The four Penrose conditions for operators that declare ``pinv_is_exact`` (projection samplers rely on it)."""
    if name == "downsample" and size % 2:
        pytest.skip("factor 2 needs an even size")
    op, x, y = _setup(name, size, channels=3)
    P = op.A_pinv
    x2, y2 = _randn(x.shape, seed=5), _randn(y.shape, seed=6)
    torch.testing.assert_close(op.A(P(op.A(x))), op.A(x))  # A A⁺ A = A
    torch.testing.assert_close(P(op.A(P(y))), P(y))  # A⁺ A A⁺ = A⁺
    torch.testing.assert_close((op.A(P(y)) * y2).sum(), (y * op.A(P(y2))).sum())  # A A⁺ symmetric
    torch.testing.assert_close((P(op.A(x)) * x2).sum(), (x * P(op.A(x2))).sum())  # A⁺ A symmetric


def test_cg_pseudo_inverse_matches_closed_form():
    op, _, y = _setup("downsample")
    torch.testing.assert_close(op.pinv_damped(y, n_iter=5), op.A_pinv(y))


@pytest.mark.parametrize("name", ["blur", "ct"])
def test_damped_cg_pseudo_inverse_equals_tikhonov(name):
    # Aᵀ (A Aᵀ + λ I)⁻¹ y = (AᵀA + λ I)⁻¹ Aᵀ y: the minimizer of ‖A x − y‖² + λ ‖x‖².
    from priorshift.analytic import operator_matrix

    op = registry.get("operator", name).example(image_size=8, channels=1, noise_std=0.0)
    y = op.A(torch.randn(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    A = operator_matrix(op, (1, 8, 8))
    for damping in (1e-2, 1.0):
        expected = torch.linalg.solve(A.T @ A + damping * torch.eye(A.shape[1], dtype=torch.float64), A.T @ y.reshape(2, -1).T)
        got = op.pinv_damped(y, damping, n_iter=200)
        torch.testing.assert_close(got, expected.T.reshape(got.shape), atol=1e-8 * float(got.abs().max()), rtol=0)
    with pytest.raises(ValueError, match="NaN"):
        op.pinv_damped(torch.full_like(y, float("nan")), 0.1)


def test_inpainting_mask_shapes_and_errors():
    x = _randn((2, 3, 8, 8))
    for mask in (torch.ones(8, 8), torch.ones(3, 8, 8), torch.ones(2, 3, 8, 8), torch.ones(8, 8, dtype=torch.bool)):
        assert Inpainting(mask).A(x).shape == x.shape
    with pytest.raises(ValueError, match=r"mask of shape \(1, 16, 16\) does not fit x"):
        Inpainting(random_pixel_mask(16, 0.5)).A(x)
    with pytest.raises(ValueError, match=r"mask of shape \(4, 3, 8, 8\) does not fit x"):
        Inpainting(torch.ones(4, 3, 8, 8)).A(x)
    with pytest.raises(ValueError, match="only 0 .* and 1"):
        Inpainting(torch.full((8, 8), 0.5))
    op = Inpainting(box_mask(8, (2, 2, 4, 4)))
    assert float(op.A(torch.ones(1, 1, 8, 8)).sum()) == 64 - 16


def test_blur_and_downsample_errors():
    for call, match in (
        (lambda: GaussianBlur(4, 1.0), "odd"),
        (lambda: GaussianBlur(5, 0.0), "sigma"),
        (lambda: GaussianBlur(9, 2.0).A(torch.zeros(1, 1, 8, 8)), "smaller than the 9×9 blur kernel"),
        (lambda: Downsample(2).A(torch.zeros(1, 1, 15, 16)), "not divisible by the downsampling factor 2"),
    ):
        with pytest.raises(ValueError, match=match):
            call()


def test_blur_matches_direct_circular_convolution_and_pinv_helps():
    op = GaussianBlur(5, 1.0)
    x = _randn((1, 2, 12, 12))
    k = op.kernel
    ref = torch.zeros_like(x)
    for a in range(5):
        for b in range(5):
            ref += k[a, b] * torch.roll(x, shifts=(a - 2, b - 2), dims=(-2, -1))
    torch.testing.assert_close(op.A(x), ref)
    smooth = op.A(op.A(x))  # a band-limited image the blur does not wipe out
    assert (op.A_pinv(op.A(smooth)) - smooth).norm() < 0.2 * (op.A(smooth) - smooth).norm()


def test_mri_mask_and_errors():
    m = cartesian_mask((16, 32), acceleration=4, center_lines=4, generator=torch.Generator().manual_seed(3))
    assert m.shape == (16, 32) and float(m.sum()) == 16 * 8
    assert bool((m == m[:1]).all()) and bool(m[:, 14:18].eq(1).all())  # whole columns, centre sampled
    assert torch.equal(m, cartesian_mask((16, 32), 4, 4, generator=torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="center_lines"):
        cartesian_mask(16, 4, 8)
    with pytest.raises(ValueError, match=r"MRI mask is \(16, 32\)"):
        MRI(m).A(torch.zeros(1, 1, 32, 32))
    op = MRI(torch.ones(16, 16))  # full sampling: A is unitary, A⁺ = Aᵀ is the exact inverse
    x = _randn((1, 1, 16, 16))
    torch.testing.assert_close(op.A_pinv(op.A(x)), x)
    assert float(op.A(torch.ones(1, 1, 16, 16))[0, 0, 8, 8, 0]) == pytest.approx(16.0)  # DC centred


# -- per-image masks ------------------------------------------------------------------------------------
REDRAWABLE = [n for n in NAMES if getattr(registry.get("operator", n).example(), "mask_family", None) is not None]


def test_the_masked_operators_redraw():
    assert {"inpainting", "mri"} <= set(REDRAWABLE)


@pytest.mark.parametrize("name", REDRAWABLE)
@pytest.mark.parametrize("size,channels", [(16, 1), (16, 3), (15, 3), (32, 1)])
def test_per_image_masks_adjoint_pinv_and_batch(name, size, channels):
    """One mask per image (``redraw``): the exact adjoint, the Penrose conditions, and image b measured alone
    with its own mask equals row b of the batch."""
    seeds = [5, 6, 7]
    op = registry.get("operator", name).example(image_size=size, channels=channels).redraw(seeds, 3)
    assert op.mask.shape[0] == 3 and not torch.equal(op.mask[0], op.mask[1])
    x = _randn((3, channels, size, size))
    y = _randn(tuple(op.A(x).shape), seed=1)
    assert adjoint_error(op, x, y) < 1e-6
    P = op.A_pinv
    x2, y2 = _randn(x.shape, seed=5), _randn(y.shape, seed=6)
    torch.testing.assert_close(op.A(P(op.A(x))), op.A(x))
    torch.testing.assert_close(P(op.A(P(y))), P(y))
    torch.testing.assert_close((op.A(P(y)) * y2).sum(), (y * op.A(P(y2))).sum())
    torch.testing.assert_close((P(op.A(x)) * x2).sum(), (x * P(op.A(x2))).sum())
    for b, s in enumerate(seeds):
        one = op.redraw([s], 1)
        assert torch.equal(one.mask.reshape(op.mask[b].shape), op.mask[b])  # a mask depends on its image's seed only
        torch.testing.assert_close(one.A(x[b : b + 1]), op.A(x)[b : b + 1], rtol=0, atol=0)
        torch.testing.assert_close(one.A_pinv(y[b : b + 1]), P(y)[b : b + 1], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="per-image masks|does not fit"):
        op.A(x[:2])


def test_redraw_draws_from_the_mask_generators():
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    inp = Inpainting.random(16, 0.3, block=4, noise_std=0.1).redraw([3, 4], 2)
    assert inp.mask.shape == (2, 1, 16, 16) and inp.noise_std == 0.1
    for b, s in enumerate([3, 4]):
        assert torch.equal(inp.mask[b], random_block_mask(16, 4, 0.3, generator=g(s)))
    mri = MRI.random(16, 4, 2).redraw([3, 4], 2)
    assert mri.mask.shape == (2, 16, 16)
    for b, s in enumerate([3, 4]):
        assert torch.equal(mri.mask[b], cartesian_mask(16, 4, 2, generator=g(s)))
    assert torch.equal(Inpainting.example().mask, random_pixel_mask(16, 0.5, generator=g(0)))  # same mask as before
    with pytest.raises(ValueError, match="no mask family"):
        Inpainting(torch.ones(8, 8)).redraw(0, 2)
    with pytest.raises(ValueError, match="block = 3 must divide"):
        Inpainting.random(16, 0.5, block=3)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        Inpainting.random(16, 1.5)
    with pytest.raises(ValueError, match="center_lines"):
        MRI.random(16, 4, 8)


# -- CT -------------------------------------------------------------------------------------------------
def test_ct_geometry_and_errors():
    op = ParallelBeamCT(16, 4)
    assert op.n_detectors >= math.sqrt(2) * 16 and op.n_detectors % 2 == 0
    torch.testing.assert_close(op.angles, torch.arange(4, dtype=torch.float64) * math.pi / 4)
    # θ = 0: vertical rays, bins aligned with columns → column sums of the image.
    x = _randn((1, 1, 16, 16))
    off = (op.n_detectors - 16) // 2
    torch.testing.assert_close(op.A(x)[0, 0, 0, off : off + 16], x[0, 0].sum(0), rtol=1e-10, atol=1e-10)
    S = radon_matrix(16, op.angles, op.n_detectors)  # a valid CSR: sorted, no duplicate entries
    torch.sparse_csr_tensor(S.crow_indices(), S.col_indices(), S.values(), S.shape, check_invariants=True)
    with pytest.raises(ValueError, match=r"x must have shape \(\*, \*, 16, 16\)"):
        op.A(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="angles"):
        ParallelBeamCT(16, 4, angles=[0.0, 1.0])
    with pytest.raises(ValueError, match="n_views"):
        ParallelBeamCT(16, 0)
    with pytest.raises(ValueError, match="unknown FBP filter 'shepp'"):
        op.fbp(op.A(x), filter="shepp")


def test_ct_double_backward():
    op = ParallelBeamCT(6, 3)
    x = _randn((1, 1, 6, 6)).requires_grad_(True)
    torch.autograd.gradgradcheck(lambda t: op.A(t).square().sum(), (x,))


@pytest.fixture(scope="module")
def phantom():
    data = pytest.importorskip("skimage.data")
    transform = pytest.importorskip("skimage.transform")
    ph = torch.tensor(transform.resize(data.shepp_logan_phantom(), (64, 64), anti_aliasing=True))
    return (2 * (ph - ph.min()) / (ph.max() - ph.min()) - 1)[None, None]


def _psnr(a, b):  # images in [-1, 1]: peak-to-peak 2
    return float(10 * torch.log10(4 / (a - b).square().mean()))


def test_ct_fbp_reconstructs_phantom(phantom):
    op = ParallelBeamCT(64, 64)
    y = op.A(phantom)
    rec = op.fbp(y)
    torch.testing.assert_close(op.A_pinv(y), rec)
    bp = op.A_adjoint(y).flatten()
    design = torch.stack([bp, torch.ones_like(bp)], 1)  # best affine rescaling of the plain back-projection
    bp_fit = design @ torch.linalg.lstsq(design, phantom.flatten()[:, None]).solution
    psnr_fbp, psnr_bp = _psnr(rec, phantom), _psnr(bp_fit.reshape(phantom.shape), phantom)
    # Measured: FBP 28.4 dB, affinely fitted back-projection 14.9 dB, Hann FBP 22.5 dB.
    assert psnr_fbp > 26 and psnr_fbp > psnr_bp + 12
    assert _psnr(op.fbp(y, filter="hann"), phantom) > psnr_bp + 5


def test_ct_pinv_damped_reduces_residual(phantom):
    op = ParallelBeamCT(64, 24)
    y = op.A(phantom)
    res = [float((op.A(op.pinv_damped(y, n_iter=n)) - y).norm() / y.norm()) for n in (2, 10, 30)]
    # Measured: 0.076, 0.0038, 0.0013; FBP: 0.062.
    assert res[0] > res[1] > res[2] and res[2] < 0.01
    assert res[2] < float((op.A(op.fbp(y)) - y).norm() / y.norm())


# -- masks ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size,n_blocks", [(16, 2), (16, 4), ((16, 32), 8)])
def test_checkerboard_alternates(size, n_blocks):
    m0 = checkerboard_mask(size, n_blocks, 0)
    assert m0.shape[0] == 1 and float(m0.mean()) == 0.5 and float(m0[0, 0, 0]) == 1.0
    for k in range(3):
        assert torch.equal(checkerboard_mask(size, n_blocks, 2 * k), m0)
        assert torch.equal(checkerboard_mask(size, n_blocks, 2 * k + 1), 1 - m0)
    with pytest.raises(ValueError, match="n_blocks"):
        checkerboard_mask(size, 3, 0)
    with pytest.raises(ValueError, match="attempt"):
        checkerboard_mask(size, n_blocks, -1)


def test_random_masks_fraction_and_reproducibility():
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    for frac in (0.1, 0.5, 0.9):
        m = random_pixel_mask((64, 128), frac, generator=g())
        assert m.shape == (1, 64, 128) and set(m.unique().tolist()) <= {0.0, 1.0}
        assert abs(float(m.mean()) - frac) < 4 * math.sqrt(frac * (1 - frac) / m.numel())  # 4 binomial sd
        b = random_block_mask(256, 4, frac, generator=g())
        assert abs(float(b.mean()) - frac) < 4 * math.sqrt(frac * (1 - frac) / 64**2)
        assert torch.equal(b, b[:, ::4, ::4].repeat_interleave(4, 1).repeat_interleave(4, 2))  # constant tiles
    assert torch.equal(random_pixel_mask(32, 0.5, generator=g()), random_pixel_mask(32, 0.5, generator=g()))
    assert float(random_pixel_mask(8, 1.0).mean()) == 1.0
    for call in (
        lambda: random_pixel_mask(8, 0.0),
        lambda: random_block_mask(10, 4, 0.5),
        lambda: box_mask(8, (6, 0, 4, 4)),
        lambda: random_pixel_mask((8, -1), 0.5),
    ):
        with pytest.raises(ValueError):
            call()


# -- deepinv adapter ------------------------------------------------------------------------------------
class _DuckPhysics:
    """A duck-typed linear physics (a 2× downsampling) standing in for deepinv where it is not installed."""

    def __init__(self):
        self.op = Downsample(2)

    def A(self, x):
        return self.op.A(x)

    def A_adjoint(self, y):
        return self.op.A_adjoint(y)


def test_adapter_with_duck_typed_physics():
    op = DeepinvOperator(_DuckPhysics(), noise_std=0.1)
    x, y = _randn((2, 1, 8, 8)), _randn((2, 1, 4, 4))
    assert adjoint_error(op, x, y) < 1e-12
    torch.testing.assert_close(op.A_pinv(y), Downsample(2).A_pinv(y))  # falls back to pinv_damped
    assert op(x, seed=[0, 1]).shape == (2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"callable A\(\.\.\.\)"):
        DeepinvOperator(object())


@pytest.mark.deepinv
def test_adapter_with_deepinv():
    dinv = pytest.importorskip("deepinv")
    physics = dinv.physics.Inpainting((1, 16, 16), mask=0.5)
    op = DeepinvOperator(physics)
    x, y = _randn((2, 1, 16, 16)), _randn((2, 1, 16, 16))
    assert adjoint_error(op, x, y) < 1e-6
    assert op.A_pinv(op.A(x)).shape == x.shape
    with pytest.raises(ValueError, match="LinearPhysics"):
        DeepinvOperator(dinv.physics.Physics(A=lambda t: t))
