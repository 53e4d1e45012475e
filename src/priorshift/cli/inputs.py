"""How ``priorshift score`` reads its arrays: one reading of every input, declared, checked and recorded.

* **Declared, never guessed.** A file's kind (images or measurements) is the one its flag says: ``--images`` are
  images, ``--measurements`` measurements, and ``--fit`` is read as the scored input is (images with ``--images``,
  measurements with ``--measurements``) unless ``--fit-kind`` says otherwise. No shape coincidence decides it.
* **Checked before anything is scored**, each failure one ``ValueError`` naming the flag, the file and both sizes:
  images against the prior's image size and channels; measurements against the shape the operator gives the
  prior's images; measurements must be float (an integer file is images).
* **Recorded**: :func:`read_images` / :func:`read_measurements` return with the tensor a plain dict (flag, path,
  kind, dtype, shape, the value reading of images, whether they were then measured) that the score run writes to
  ``config.json`` (``inputs``) and ``config.toml`` (``[run] inputs``).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["KINDS", "shape_text", "image_shape", "measurement_shape", "read_images", "read_measurements", "fit_kind"]

KINDS = ("images", "measurements")


def shape_text(shape) -> str:
    """``(1, 32, 32)`` → ``"1×32×32"``."""
    return "×".join(str(int(s)) for s in shape)


def image_shape(prior) -> tuple[int, int, int]:
    """``(C, H, W)`` of the images ``prior`` takes."""
    return int(prior.channels), int(prior.image_size), int(prior.image_size)


def measurement_shape(op, prior) -> tuple[int, ...] | None:
    """The shape (without the batch axis) ``op`` gives one of ``prior``'s images; ``None`` when it cannot say for a
    batch of one (an operator holding one mask per image)."""
    import torch

    try:
        return tuple(op.A(torch.zeros(1, *image_shape(prior))).shape[1:])
    except (ValueError, RuntimeError):
        return None


def _check_file(path: str, flag: str) -> None:
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{flag} {path} is a directory; give a .npy file")
    if not p.is_file():
        raise ValueError(f"{flag} file {path!r} does not exist")


def _record(flag: str, path: str, kind: str, arr, **more) -> dict:
    return {"flag": flag, "path": str(Path(path).expanduser().absolute()), "kind": kind, "dtype": str(arr.dtype),
            "shape": [int(s) for s in arr.shape], **more}


def read_images(path: str, flag: str, value_range: str | None, prior, prior_name) -> tuple:
    """Images from ``path`` in [-1, 1] (:func:`priorshift.data.npy_stack`'s value rule, ``value_range`` forcing a
    reading), checked against the prior's image size: ``(x, record)``."""
    from priorshift.data.datasets import images_from_array
    from priorshift.data.npyfile import read_npy

    _check_file(path, flag)
    try:
        raw = read_npy(path)
        x, reading = images_from_array(raw, str(path), value_range)
    except ValueError as e:
        raise ValueError(f"{flag} {e}") from None
    want = image_shape(prior)
    if tuple(x.shape[1:]) != want:
        raise ValueError(f"{flag} {path} holds {x.shape[-2]}×{x.shape[-1]} images with {x.shape[1]} channel(s); the prior {prior_name} "
                         f"takes {want[1]}×{want[2]} with {want[0]}: resize them, or use a prior of that size")
    return x, _record(flag, path, "images", raw, value_range=reading, measured=False)


def read_measurements(path: str, flag: str, op, prior, prior_name, *, images_flag: str = "--images") -> tuple:
    """Measurements from ``path`` as float32, read as they are (never rescaled), checked against the shape ``op``
    gives the prior's images: ``(y, record)``. ``images_flag``: how to give the file as images instead."""
    import numpy as np
    import torch

    from priorshift.data.npyfile import read_npy

    _check_file(path, flag)
    try:
        arr = read_npy(path)
    except ValueError as e:
        raise ValueError(f"{flag} {e}") from None
    if arr.ndim == 0 or arr.shape[0] == 0 or arr.size == 0:
        raise ValueError(f"{flag} file {path!r} holds 0 samples (shape {arr.shape})")
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
        raise ValueError(f"{flag} {path} holds {arr.dtype} values, but measurements are float, as the operator returns them; "
                         f"if the file holds images, give it with {images_flag}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{flag} file {path!r} holds {arr.dtype} values; save a numeric (float) array")
    want = measurement_shape(op, prior)
    if want is not None and tuple(arr.shape[1:]) != want:
        c, s = image_shape(prior)[:2]
        raise ValueError(f"{flag} {path} holds measurements of shape {shape_text(arr.shape[1:])}; {op!r} measures the prior {prior_name}'s "
                         f"{s}×{s} images ({c} channel(s)) as {shape_text(want)}: check --operator and --prior"
                         + (f", or give images with {images_flag}" if images_flag != "--images" else ""))
    y = torch.from_numpy(np.ascontiguousarray(arr)).float()
    return y, _record(flag, path, "measurements", arr)


def fit_kind(args) -> str:
    """What ``--fit`` holds: ``--fit-kind`` when given, else the kind of the scored input (``--images`` → images,
    ``--measurements`` → measurements)."""
    given = getattr(args, "fit_kind", None)
    if given is not None:
        if given not in KINDS:
            raise ValueError(f"--fit-kind must be one of {', '.join(KINDS)}, got {given!r}")
        return given
    return "images" if args.images is not None else "measurements"
