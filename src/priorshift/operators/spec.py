"""Operator specs: ``NAME[:k=v,...]`` strings for the command line and bench configs.

``ct:views=24,noise=0.01``, ``inpaint:p=0.5,block=4``, ``blur:kernel=7,sigma=2``, ``sr:factor=4``,
``mri:accel=4``, ``identity:noise=0.05`` — short names and parameter aliases are listed in ``OPERATOR_ALIASES``
and ``PARAM_ALIASES``; values are Python literals (``parse_value``). A spec is read once (:func:`parse_spec` →
:class:`OperatorSpec`) and built from what was read (:func:`operator_from_spec`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["OPERATOR_ALIASES", "PARAM_ALIASES", "OperatorSpec", "parse_spec", "parse_value", "parse_pairs", "operator_from_spec"]

# Short names accepted in operator specs, e.g. ``ct:views=24,noise=0.01`` or ``blur:sigma=2``.
OPERATOR_ALIASES = {"inpaint": "inpainting", "sr": "downsample", "denoise": "identity"}
PARAM_ALIASES = {"noise": "noise_std", "views": "n_views", "kernel": "kernel_size"}


def parse_value(text: str):
    """A ``k=v`` value: a Python literal when it is one (``0.1``, ``False``, ``0.4,0.75`` → a tuple), else the string."""
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_pairs(items, what: str) -> dict:
    """``["a=1", "plan.zeta=0.1"]`` → ``{"a": 1, "plan": {"zeta": 0.1}}``."""
    out: dict = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} {item!r} must look like key=value")
        target = out
        *parents, leaf = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = parse_value(value)
    return out


@dataclass(frozen=True)
class OperatorSpec:
    """A spec as read: ``name`` (a registered operator, aliases resolved), ``params`` (names aliased, values
    parsed: ``ct:views=20,noise=0.5`` → ``{"n_views": 20, "noise_std": 0.5}``) and ``text``, the spec itself
    (``str(spec)``)."""

    name: str
    params: Mapping[str, Any]
    text: str

    def __str__(self) -> str:
        return self.text

    def with_param(self, key: str, value) -> "OperatorSpec":
        """This spec with ``key=value`` appended (``key`` not set yet): ``ct:views=20`` → ``ct:views=20,noise_std=0.5``."""
        if key in self.params:
            raise ValueError(f"--operator {self.text!r} already sets {key}")
        name, sep, rest = self.text.partition(":")
        return OperatorSpec(self.name, {**self.params, key: value}, f"{name}:{rest}{',' if rest else ''}{key}={value!r}")


def parse_spec(spec: str | OperatorSpec) -> OperatorSpec:
    """Read ``NAME[:k=v,...]``; a ``ValueError`` naming ``--operator`` and the spec for an unknown operator or an
    item that is not ``key=value``. An :class:`OperatorSpec` is returned as it is."""
    from priorshift.registry import names

    if isinstance(spec, OperatorSpec):
        return spec
    name, _, rest = spec.partition(":")
    name = OPERATOR_ALIASES.get(name, name)
    if name not in names("operator"):
        raise ValueError(f"unknown operator {name!r} in --operator {spec!r}; choose one of {', '.join(names('operator'))} (or inpaint, sr)")
    params = {}
    for item in filter(None, rest.split(",")):
        k, sep, v = item.partition("=")
        if not sep:
            raise ValueError(f"operator parameter {item!r} in --operator {spec!r} must look like key=value")
        params[PARAM_ALIASES.get(k, k)] = parse_value(v)
    return OperatorSpec(name, params, spec)


def operator_from_spec(spec: str | OperatorSpec, image_size: int, mask_path: str | None = None):
    """``NAME[:k=v,...]`` (text, or as read by :func:`parse_spec`) → an operator. ``ct`` gets the prior's image
    size; ``blur`` without ``kernel`` a kernel of ±3σ (at most the image); ``inpainting`` without a mask gets a random
    pixel mask with observation probability ``p`` (default 0.5; ``block=b`` for b×b blocks, ``seed``);
    ``mask=PATH.npy`` (or ``--mask``) loads one (1 = observed; then ``p``, ``block``, ``accel``, ``seed`` are refused)."""
    import math

    import numpy as np
    import torch

    from priorshift.operators import make_operator, random_block_mask, random_pixel_mask

    spec = parse_spec(spec)
    name, kw = spec.name, dict(spec.params)
    mask_path = kw.pop("mask", mask_path)
    if name == "ct":
        kw.setdefault("image_size", image_size)
    if name == "blur" and "kernel_size" not in kw and isinstance(kw.get("sigma"), (int, float)) and kw["sigma"] > 0:
        kw["kernel_size"] = min(2 * math.ceil(3 * kw["sigma"]) + 1, image_size - (1 - image_size % 2))  # ±3σ, at most the image
    if name in ("inpainting", "mri"):
        if mask_path is not None:
            drawn = [k for k in ("p", "block", "accel", "seed") if k in kw]
            if drawn:
                raise ValueError(f"--mask {mask_path} gives the mask, so {', '.join(f'{k}={kw[k]!r}' for k in drawn)} in --operator "
                                 f"{spec.text!r} (the settings of a random mask) would be ignored: drop {'it' if len(drawn) == 1 else 'them'}, "
                                 "or drop --mask")
            from priorshift.data.npyfile import read_npy

            try:
                arr = read_npy(mask_path)
            except (ValueError, FileNotFoundError) as e:
                raise ValueError(f"--mask {e}") from None
            if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
                raise ValueError(f"--mask {mask_path} holds {arr.dtype} values; save a 0/1 numeric array")
            kw["mask"] = torch.from_numpy(arr.astype("float32"))
        elif name == "inpainting":
            p, block, seed = float(kw.pop("p", 0.5)), int(kw.pop("block", 1)), int(kw.pop("seed", 0))
            g = torch.Generator().manual_seed(seed)
            kw["mask"] = random_pixel_mask(image_size, p, generator=g) if block == 1 else random_block_mask(image_size, block, p, generator=g)
        else:
            from priorshift.operators import cartesian_mask

            accel, seed = int(kw.pop("accel", 4)), int(kw.pop("seed", 0))
            kw["mask"] = cartesian_mask(image_size, accel, max(1, image_size // 8), generator=torch.Generator().manual_seed(seed))
    try:
        return make_operator(name, **kw)
    except TypeError as e:
        raise ValueError(f"--operator {spec.text!r}: {e}") from None
    except ValueError as e:
        if mask_path is not None and str(e).startswith("mask"):
            raise ValueError(f"--mask {mask_path}: {e}") from None
        raise ValueError(f"--operator {spec.text!r}: {e}") from None
