"""Patch prior tiling (PaDIS): stitching is exact for a pixel-independent prior, offsets depend on (seed, σ) only,
coordinates are right at every offset, and training crops carry the right coordinates and masks."""

import math

import pytest
import torch

from priorshift.diffusion.patch import (
    PatchDenoiser,
    patch_coordinates,
    patch_offsets,
    patch_training_batch,
    tile_patches,
    untile_patches,
)

S, PAD = 24, 8  # training image size and coordinate padding used by the analytic patch prior below


class DiagonalGaussianPatchPrior:
    """Exact patch denoiser of a pixel-independent Gaussian prior with a different mean and variance at every
    image pixel, ``x0[u, v] ~ N(μ[u, v], s²[u, v])``: it can only be right if it reads the pixel's coordinates.
    Padding pixels (outside the image) are known exactly, so their denoised value is the pad value."""

    def __init__(self, size, pad, pad_value=-1.0, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.size, self.pad, self.pad_value = size, pad, pad_value
        self.mean = torch.rand(1, size, size, generator=g, dtype=torch.float64) - 0.5
        self.var = 0.05 + 0.3 * torch.rand(1, size, size, generator=g, dtype=torch.float64)
        self.sigma_min, self.sigma_max = 0.002, 80.0

    def full(self, x, sigma):
        s2 = sigma.reshape(-1, 1, 1, 1).double() ** 2
        return (self.mean + self.var / (self.var + s2) * (x.double() - self.mean)).to(x.dtype)

    def __call__(self, x, sigma, cond):
        # invert the coordinate map: coordinate c → image index u (training size = image size here)
        def index(c):
            t = ((c.double() + 1) / 2 * (self.size + 2 * self.pad) - self.pad) / self.size
            return torch.round(t * self.size - 0.5).long()

        u_col, u_row = index(cond[:, 0]), index(cond[:, 1])  # (N, P, P)
        inside = (u_row >= 0) & (u_row < self.size) & (u_col >= 0) & (u_col < self.size)
        mu = self.mean[0][u_row.clamp(0, self.size - 1), u_col.clamp(0, self.size - 1)][:, None]
        var = self.var[0][u_row.clamp(0, self.size - 1), u_col.clamp(0, self.size - 1)][:, None]
        s2 = sigma.reshape(-1, 1, 1, 1).double() ** 2
        d = mu + var / (var + s2) * (x.double() - mu)
        return torch.where(inside[:, None], d, torch.full_like(d, self.pad_value)).to(x.dtype)


@pytest.mark.parametrize("patch", [4, 8, 5])
def test_stitched_denoiser_equals_the_exact_one(patch):
    prior = DiagonalGaussianPatchPrior(S, PAD)
    den = PatchDenoiser(prior, patch_size=patch, image_size=S, train_size=S, pad=PAD)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 1, S, S, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.05, 0.3, 1.0, 2.0, 0.05, 7.0], dtype=torch.float64)
    torch.testing.assert_close(den(x, sigma), prior.full(x, sigma), rtol=0, atol=1e-12)


def test_a_prior_without_coordinates_is_wrong_so_the_test_can_fail():
    prior = DiagonalGaussianPatchPrior(S, PAD)
    den = PatchDenoiser(lambda x, s, cond: prior(x, s, torch.zeros_like(cond)), patch_size=8, image_size=S, train_size=S, pad=PAD)
    x = torch.randn(2, 1, S, S, dtype=torch.float64)
    sigma = torch.full((2,), 0.5, dtype=torch.float64)
    assert (den(x, sigma) - prior.full(x, sigma)).abs().max() > 0.1


def test_tile_untile_round_trip_at_every_offset():
    x = torch.randn(3, 2, 13, 13)
    for a in range(5):
        for b in range(5):
            offsets = torch.tensor([[a, b]] * 3)
            patches, rows, cols = tile_patches(x, offsets, 5, pad_value=-1.0)
            assert patches.shape == (3 * 4 * 4, 2, 5, 5)
            torch.testing.assert_close(untile_patches(patches, offsets, tuple(x.shape)), x, rtol=0, atol=0)
            # padding pixels carry the pad value, image pixels the image
            canvas_inside = ((rows >= 0) & (rows < 13))[:, :, None] & ((cols >= 0) & (cols < 13))[:, None, :]
            assert int(canvas_inside[0].sum()) == 13 * 13
            assert (patches == -1.0).sum() >= 3 * 2 * (20 * 20 - 13 * 13)


def test_offsets_depend_on_seed_and_sigma_never_on_the_batch():
    sigma = torch.tensor([0.1, 0.5, 2.0, 0.1])
    o = patch_offsets(sigma, 16, seed=0)
    assert o.shape == (4, 2) and int(o.min()) >= 0 and int(o.max()) < 16
    assert torch.equal(o[0], o[3])  # same σ, same offset
    for i in range(4):  # each row alone gives its own offset
        assert torch.equal(patch_offsets(sigma[i:i + 1], 16, seed=0)[0], o[i])
    levels = torch.logspace(-2, 1, 40)
    assert len({tuple(r) for r in patch_offsets(levels, 16, seed=0).tolist()}) > 20  # they move over a schedule
    assert not torch.equal(patch_offsets(levels, 16, seed=0), patch_offsets(levels, 16, seed=1))


def test_denoiser_is_a_fixed_function_of_x_and_sigma():
    prior = DiagonalGaussianPatchPrior(S, PAD)
    den = PatchDenoiser(lambda x, s, cond: prior(x, s, cond) + 0.01 * cond[:, :1], patch_size=8, image_size=S, train_size=S, pad=PAD)
    x = torch.randn(4, 1, S, S)
    sigma = torch.full((4,), 0.7)
    torch.testing.assert_close(den(x, sigma), den(x, sigma), rtol=0, atol=0)
    torch.testing.assert_close(den(x[2:3], sigma[2:3]), den(x, sigma)[2:3], rtol=0, atol=0)


def test_coordinates_are_pixel_centres_over_the_padded_canvas():
    u = torch.arange(-PAD, S + PAD)
    c = patch_coordinates(u, S, S, PAD)
    n = S + 2 * PAD
    torch.testing.assert_close(c, (2 * torch.arange(n, dtype=torch.float32) + 1) / n - 1)
    assert c.min() > -1 and c.max() < 1
    # another image size keeps the body's coordinates: the image's first/last pixel edges map alike
    big = patch_coordinates(torch.tensor([-0.5, 2 * S - 0.5]), 2 * S, S, PAD)
    torch.testing.assert_close(big, patch_coordinates(torch.tensor([-0.5, S - 0.5]), S, S, PAD))


def test_training_crops_match_the_coordinates_of_inference():
    prior = DiagonalGaussianPatchPrior(S, PAD)
    g = torch.Generator().manual_seed(0)
    images = prior.mean.expand(16, 1, S, S).float().clone()
    for _ in range(10):
        crops, coords, inside = patch_training_batch(images, g, sizes=(8, 16), probs=(0.5, 0.5), p_whole=0.2, pad=PAD)
        q = crops.shape[-1]
        assert q in (8, 16, S) and coords.shape == (16, 2, q, q) and inside.shape == (16, 1, q, q)
        # at σ → 0 the exact patch prior returns the crop itself: coordinates and padding are consistent
        d = prior(crops.double(), torch.full((16,), 1e-6, dtype=torch.float64), coords)
        torch.testing.assert_close(d.float(), crops, rtol=0, atol=1e-5)
        assert ((crops == -1.0) | inside.bool()).all()


def test_bad_patch_size_is_refused():
    with pytest.raises(ValueError, match="patch_size"):
        PatchDenoiser(lambda *a, **k: None, patch_size=40, image_size=64, train_size=64, pad=32)


def test_cost_grows_as_one_plus_p_over_h_squared():
    calls = []
    prior = DiagonalGaussianPatchPrior(S, PAD)

    def counting(x, s, cond):
        calls.append(x.shape[0] * x.shape[-1] ** 2)
        return prior(x, s, cond)

    den = PatchDenoiser(counting, patch_size=8, image_size=S, train_size=S, pad=PAD)
    den(torch.zeros(2, 1, S, S), torch.ones(2))
    assert calls == [2 * (math.ceil(S / 8) + 1) ** 2 * 64]


# -- the patch-unet backbone: trained from a stream, saved, loaded as a whole-image denoiser ----------------------

def _tiny_patch_cfg(**kw):
    from priorshift.diffusion.patch_unet import PatchUNetConfig

    return PatchUNetConfig(image_size=16, widths=(8, 16), embedding_dim=16, patch_size=8, pad=8, crop_sizes=(4, 8),
                           crop_probs=(0.5, 0.5), p_whole=0.3, **kw)


def _stream(step, batch_size):
    g = torch.Generator().manual_seed(1000 + step)
    return (torch.rand(batch_size, 1, 16, 16, generator=g) * 2 - 1).clamp(-1, 1)


def test_patch_prior_trains_from_a_stream_and_loads_as_a_patch_denoiser(tmp_path):
    from priorshift.diffusion import EDMDenoiser
    from priorshift.diffusion.checkpoint import load_prior
    from priorshift.diffusion.training import TrainConfig, train

    cfg = TrainConfig(name="tiny-patch", steps=3, batch_size=4, backbone="patch-unet", network=_tiny_patch_cfg(), checkpoint_every=2)
    path = train(cfg, _stream, tmp_path / "run", progress=False)
    prior = load_prior(path)
    assert isinstance(prior, PatchDenoiser) and prior.image_size == 16 and prior.config["architecture"] == "patch-unet"
    assert prior.net.stem.in_channels == 1 + 2
    by_hand = PatchDenoiser(EDMDenoiser(prior.net, sigma_data=0.5, channels=1), patch_size=8, image_size=16, train_size=16, pad=8)
    x, sigma = torch.randn(3, 1, 16, 16), torch.tensor([0.1, 1.0, 10.0])
    torch.testing.assert_close(prior(x, sigma), by_hand(x, sigma), rtol=0, atol=0)
    big = prior.at_size(32)  # the same network on larger images
    assert big(torch.randn(2, 1, 32, 32), torch.ones(2)).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="16"):
        prior(torch.randn(1, 1, 32, 32), torch.ones(1))


def test_a_stream_run_resumes_exactly(tmp_path):
    from priorshift.diffusion.training import TrainConfig, train
    from safetensors.torch import load_file

    def cfg():
        return TrainConfig(name="p", steps=4, batch_size=4, backbone="patch-unet", network=_tiny_patch_cfg(), checkpoint_every=1)

    straight = train(cfg(), _stream, tmp_path / "a", progress=False)
    assert train(cfg(), _stream, tmp_path / "b", progress=False, stop_at=2) is None
    resumed = train(cfg(), _stream, tmp_path / "b", progress=False)
    a, b = load_file(str(straight)), load_file(str(resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_padding_gets_no_noise_and_no_loss():
    """The EDM loss with ``noised=inside`` leaves padding clean and outside the loss: a network that is exact
    inside and arbitrary outside has (nearly) zero loss."""
    from priorshift.diffusion.training import edm_loss

    inside = torch.zeros(2, 1, 8, 8)
    inside[..., 2:6, 2:6] = 1
    x0 = torch.where(inside.bool(), torch.rand(2, 1, 8, 8), torch.full((2, 1, 8, 8), -1.0))
    seen = {}

    class Oracle:
        sigma_data = 0.5

        def __call__(self, x, sigma, cond=None):
            seen["x"] = x
            return torch.where(inside.bool(), x0, torch.full_like(x0, 7.0))

    loss = edm_loss(Oracle(), x0, torch.Generator().manual_seed(0), -1.2, 1.2, mask=inside, noised=inside)
    assert float(loss) < 1e-10
    assert torch.equal(seen["x"][~inside.bool().expand_as(x0)], x0[~inside.bool().expand_as(x0)])


def test_train_cli_backbone_network_and_stream_flags(tmp_path, capsys):
    from priorshift.cli import main
    from priorshift.diffusion.checkpoint import load_prior

    base = ["train", "--image-size", "16", "--steps", "1", "--batch-size", "2", "--no-grid", "--quiet"]
    assert main([*base, "--data", "phantom-ct", "--stream", "--train-size", "8", "--out", str(tmp_path / "x")]) == 2
    assert "--stream renders procedural phantoms" in capsys.readouterr().err
    assert main([*base, "--data", "phantom-ct", "--backbone", "patch-unet", "--network", "depth=3", "--out", str(tmp_path / "x")]) == 2
    assert "give KEY=VALUE with KEY one of" in capsys.readouterr().err
    assert main([*base, "--data", "phantom-ct", "--backbone", "patch-unet", "--network", "crop_sizes=4,x", "--out", str(tmp_path / "x")]) == 2
    assert "crop_sizes must be comma-separated ints" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    argv = [*base, "--data", "phantom-ct", "--stream", "--backbone", "patch-unet", "--network", "widths=8,16", "--network", "embedding_dim=16",
            "--network", "crop_sizes=4,8", "--network", "patch_size=8", "--network", "pad=8", "--out", str(tmp_path / "ok")]
    assert main(argv) == 0
    prior = load_prior(tmp_path / "ok")
    assert isinstance(prior, PatchDenoiser) and prior.patch_size == 8 and prior.config["dataset"]["n"] is None
    assert tuple(prior.config["patch-unet"]["crop_sizes"]) == (4, 8)


def test_alignment_refuses_a_patch_prior_with_one_clear_error(tmp_path):
    from priorshift.adapt import adapt_prior
    from priorshift.diffusion.checkpoint import load_prior
    from priorshift.diffusion.training import TrainConfig, train

    path = train(TrainConfig(name="p", steps=1, batch_size=2, backbone="patch-unet", network=_tiny_patch_cfg()), _stream, tmp_path / "run",
                 progress=False)
    with pytest.raises(ValueError, match="patch priors are not supported yet"):
        adapt_prior(load_prior(path), None, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="train it without a mask"):
        train(TrainConfig(name="q", steps=1, batch_size=2, backbone="patch-unet", network=_tiny_patch_cfg()), _stream(0, 4), tmp_path / "q",
              progress=False, mask=torch.ones(4, 1, 16, 16))
