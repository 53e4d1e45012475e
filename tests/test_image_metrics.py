"""Image-quality metrics (priorshift.metrics.image): PSNR by formula, SSIM against scikit-image, LPIPS offline.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from priorshift import metrics as M
from priorshift.metrics import image as image_mod


# ================================================================================================================
# image quality
# ================================================================================================================


def _images(B=3, C=1, H=28, W=33, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, C, H, W, generator=g, dtype=torch.float64) * 2 - 1
    x = torch.from_numpy(ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, 1.5, 1.5))) * 2  # some structure
    ref = (x + 0.2 * torch.randn(B, C, H, W, generator=g, dtype=torch.float64)).clamp(-1, 1)
    return x.clamp(-1, 1).to(dtype), ref.to(dtype)


def test_psnr_formula():
    x, ref = _images(C=3)
    mse = ((x - ref) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(M.psnr(x, ref), 10 * torch.log10(4.0 / mse), rtol=0, atol=1e-12)
    torch.testing.assert_close(M.psnr(x, ref, data_range=1.0), 10 * torch.log10(1.0 / mse), rtol=0, atol=1e-12)
    assert M.psnr(x, ref).shape == (3,)
    assert torch.isinf(M.psnr(x, x)).all()
    assert M.psnr(x.float(), ref.float()).dtype == torch.float32


@pytest.mark.parametrize("C", [1, 3])
def test_ssim_matches_skimage(C):
    skm = pytest.importorskip("skimage.metrics")
    x, ref = _images(C=C, seed=C)
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=2.0)
    want = [skm.structural_similarity(x[b].numpy(), ref[b].numpy(), channel_axis=0, **kw) for b in range(len(x))]
    torch.testing.assert_close(M.ssim(x, ref), torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-10)
    # float32 computation stays within 1e-5 of skimage's float64
    got32 = M.ssim(x.float(), ref.float())
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), want, atol=1e-5)
    # the maps: 'same' equals skimage's full map (scipy 'reflect' borders); 'valid' equals its interior
    _, full = skm.structural_similarity(x[0, 0].numpy(), ref[0, 0].numpy(), full=True, **kw)
    np.testing.assert_allclose(M.ssim_map(x, ref, padding="same")[0, 0].numpy(), full, rtol=0, atol=1e-10)
    np.testing.assert_allclose(M.ssim_map(x, ref)[0, 0].numpy(), full[5:-5, 5:-5], rtol=0, atol=1e-10)
    assert M.ssim_map(x, ref).shape == (3, C, 28 - 10, 33 - 10)


def test_ssim_window7_and_identity():
    x, ref = _images(seed=9)
    # reference from scipy's Gaussian filter truncated at 2 sigma (radius 3 -> 7 taps)
    f = lambda a: ndimage.gaussian_filter(a, 1.5, truncate=2.0, mode="reflect")  # noqa: E731
    a, b = x[0, 0].numpy(), ref[0, 0].numpy()
    ux, uy = f(a), f(b)
    vx, vy, vxy = f(a * a) - ux * ux, f(b * b) - uy * uy, f(a * b) - ux * uy
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    got = M.ssim_map(x, ref, window=7)[0, 0].numpy()
    np.testing.assert_allclose(got, s[3:-3, 3:-3], rtol=0, atol=1e-10)
    assert M.ssim(x, ref, window=7)[0].item() == pytest.approx(s[3:-3, 3:-3].mean(), abs=1e-10)
    torch.testing.assert_close(M.ssim(x, x), torch.ones(3, dtype=torch.float64))


def test_image_metric_bad_inputs():
    x, ref = _images()
    with pytest.raises(ValueError, match="same shape"):
        M.ssim(x, ref[:2])
    with pytest.raises(ValueError, match="same shape"):
        M.psnr(x, ref[..., :5])
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        M.ssim(x[..., :8, :8], ref[..., :8, :8])
    with pytest.raises(ValueError, match="odd"):
        M.ssim(x, ref, window=8)
    with pytest.raises(ValueError, match="data_range"):
        M.psnr(x, ref, data_range=0)
    with pytest.raises(ValueError, match="4 dimensions|shape"):
        M.ssim(x[0], ref[0])
    with pytest.raises(ValueError, match="torch.Tensor"):
        M.psnr(x.numpy(), ref)
    with pytest.raises(ValueError, match="NaN"):
        M.psnr(x.clone().fill_(float("nan")), ref)
    with pytest.raises(ValueError, match="padding"):
        M.ssim_map(x, ref, padding="reflect")


def test_lpips_never_downloads(monkeypatch, tmp_path):
    def boom():
        raise AssertionError("LPIPS model must not be constructed when the backbone file is missing")

    monkeypatch.setattr(image_mod, "_lpips_model", boom)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)  # in case someone called set_dir
    assert M.lpips_available() is False
    x, ref = _images(C=3)
    with pytest.raises(RuntimeError, match="LPIPS is unavailable"):
        M.lpips_distance(x, ref)
    # pretend lpips and torchvision are installed: the missing file is now the reason, with the path to fill
    real_find_spec = image_mod.importlib.util.find_spec
    monkeypatch.setattr(
        image_mod.importlib.util,
        "find_spec",
        lambda name, *a: object() if name in ("lpips", "torchvision") else real_find_spec(name, *a),
    )
    assert M.lpips_available() is False
    ckpt = tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    with pytest.raises(RuntimeError, match="alexnet-owt-7be5be79.pth") as err:
        M.lpips_distance(x, ref)
    assert str(ckpt) in str(err.value)
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    assert M.lpips_available() is True
