"""Single-coil Cartesian MRI: ``y = M ⊙ F x + e`` with ``F`` the orthonormal 2-D DFT, k-space **centred**."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from priorshift._checks import check_image, check_int, check_tensor
from priorshift.operators.base import LinearOperator
from priorshift.operators.masks import RedrawMasks, as_size
from priorshift.registry import register

__all__ = ["MRI", "cartesian_mask", "CartesianMasks", "mri_observation_probability"]


def cartesian_mask(size, acceleration: float, center_lines: int, generator: torch.Generator | None = None) -> Tensor:
    """A centred ``(H, W)`` 0/1 k-space mask of fully sampled phase-encode columns (1 = sampled).

    ``round(W / acceleration)`` of the ``W`` columns are sampled: the ``center_lines`` around the DC column
    ``W // 2`` and the rest uniformly at random (without replacement, from ``generator``) among the outer
    ones, as in fastMRI's random masks. Needs ``1 ≤ center_lines ≤ round(W / acceleration)``.
    """
    h, w = as_size(size)
    if not float(acceleration) >= 1:
        raise ValueError(f"acceleration must be ≥ 1, got {acceleration!r}")
    n_lines = max(1, round(w / float(acceleration)))
    if not isinstance(center_lines, int) or not 1 <= center_lines <= n_lines:
        raise ValueError(f"center_lines must be an int in [1, {n_lines}] (= W / acceleration), got {center_lines!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    start = w // 2 - center_lines // 2
    cols = torch.zeros(w, dtype=torch.bool)
    cols[start : start + center_lines] = True
    outer = torch.nonzero(~cols).flatten()
    pick = torch.randperm(outer.numel(), generator=generator, device=generator.device if generator is not None else "cpu")
    cols[outer[pick[: n_lines - center_lines].cpu()]] = True
    return cols.float().expand(h, w).clone()


def mri_observation_probability(width: int, n_lines: int, center_lines: int) -> Tensor:
    """``E[P]`` per centred k-space column for :func:`cartesian_mask`: 1 on the ``center_lines`` around DC
    (always sampled), ``(n_lines − c) / (W − c)`` elsewhere. float64 ``(W,)``."""
    start = width // 2 - center_lines // 2
    prob = torch.full((width,), (n_lines - center_lines) / max(1, width - center_lines), dtype=torch.float64)
    prob[start : start + center_lines] = 1.0
    return prob


@dataclass(frozen=True)
class CartesianMasks:
    """The random k-space masks of :func:`cartesian_mask`: ``round(W / acceleration)`` columns, the
    ``center_lines`` around DC always (default ``max(1, W // 8)``), the others at random."""

    acceleration: float = 4.0
    center_lines: int | None = None

    def __post_init__(self):
        try:
            ok = not isinstance(self.acceleration, bool) and float(self.acceleration) >= 1
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"acceleration must be a number >= 1, got {self.acceleration!r}")
        object.__setattr__(self, "acceleration", float(self.acceleration))
        if self.center_lines is not None:
            object.__setattr__(self, "center_lines", check_int(self.center_lines, "center_lines"))

    @classmethod
    def from_mask(cls, mask: Tensor) -> "CartesianMasks":
        """The family a Cartesian mask ``(..., H, W)`` looks drawn from: ``W`` / its sampled columns, and the run of
        sampled columns around DC (``W // 2``; 1 when DC is not sampled)."""
        cols = mask.reshape(-1, mask.shape[-1]).amax(0) > 0
        w, n = cols.numel(), int(cols.sum())
        if n == 0:
            raise ValueError("the MRI mask samples no k-space column")
        lo = hi = w // 2
        if not bool(cols[lo]):
            return cls(w / n, 1)
        while lo - 1 >= 0 and bool(cols[lo - 1]):
            lo -= 1
        while hi + 1 < w and bool(cols[hi + 1]):
            hi += 1
        return cls(w / n, hi - lo + 1)

    def lines(self, width: int) -> tuple[int, int]:
        """``(n_lines, center_lines)`` for ``width`` columns; ``ValueError`` unless ``1 ≤ center_lines ≤ n_lines``."""
        n_lines = max(1, round(width / self.acceleration))
        center = self.center_lines if self.center_lines is not None else max(1, width // 8)
        if not 1 <= center <= n_lines:
            raise ValueError(f"center_lines must be in [1, {n_lines}] (= W / acceleration) for {width} columns, got {center}")
        return n_lines, center

    def check(self, size) -> tuple[int, int]:
        h, w = as_size(size)
        self.lines(w)
        return h, w

    def draw(self, size, generators) -> Tensor:
        """One mask per generator, ``(len(generators), H, W)``; mask ``b`` is :func:`cartesian_mask` from ``generators[b]``."""
        h, w = as_size(size)
        n_lines, center = self.lines(w)
        return torch.stack([cartesian_mask((h, w), w / n_lines, center, generator=g) for g in generators])

    def probability(self, size) -> Tensor:
        """``E[mask]`` per centred k-space entry, ``(H, W)`` float64 (:func:`mri_observation_probability` per column)."""
        h, w = as_size(size)
        return mri_observation_probability(w, *self.lines(w)).expand(h, w)


@register("operator", "mri")
class MRI(RedrawMasks, LinearOperator):
    """``A x = view_as_real(M ⊙ shift(F x))``: ``(B, C, H, W)`` real images → ``(B, C, H, W, 2)`` k-space.

    ``F`` = ``torch.fft.fft2(norm="ortho")`` (unitary), ``shift`` = ``fftshift`` so that both ``y`` and the
    mask are **centred** (DC at ``(H // 2, W // 2)``). ``mask``: 0/1, 1 = sampled, ``(H, W)`` (one mask for all
    images) or ``(B, H, W)`` (one per image; ``x`` must then hold ``B`` images); singleton dims in front of
    ``(H, W)`` are dropped and ``(B, 1, H, W)`` is read as ``(B, H, W)``. ``y[..., 0]`` / ``y[..., 1]`` are the
    real / imaginary parts; with the real inner product on that representation the exact adjoint is

        Aᵀ y = Re(F⁻¹ shift⁻¹(M ⊙ view_as_complex(y))).

    Because ``x`` is real, ``F x`` is conjugate-symmetric (``X(-k) = conj X(k)``): a sample at ``k`` also tells
    ``X(-k)``. The exact Moore–Penrose inverse is therefore the zero-filled reconstruction with that symmetry
    used, ``A⁺ y = Aᵀ (W ⊙ y)``, ``W = 2`` where ``k`` is sampled but ``-k`` is not, else 1 (``A Aᵀ`` is
    ``½ I`` on such samples and a projection on conjugate pairs); it equals the plain zero-filled ``Aᵀ y``
    for conjugate-symmetric masks. Unsampled entries of ``y`` carry only noise. :meth:`back_project` is the
    plain zero-filled image (the measurement-domain KL's and alignment's ``V ȳ``).

    ``mask_family`` (a :class:`CartesianMasks`, optional): the random masks ``mask`` is one draw of;
    :meth:`redraw` then gives a copy with one mask per image. :meth:`random` builds such an operator.
    """

    name = "mri"
    pinv_is_exact = True
    family_type = CartesianMasks

    def __init__(self, mask: Tensor, noise_std: float = 0.0, *, mask_family: CartesianMasks | None = None):
        super().__init__(noise_std)
        mask = self._init_mask(mask, mask_family)
        while mask.ndim > 2 and mask.shape[0] == 1:
            mask = mask[0]
        if mask.ndim == 4 and mask.shape[1] == 1:
            mask = mask[:, 0]
        if mask.ndim not in (2, 3):
            raise ValueError(f"mask must be a real (H, W) k-space mask or (B, H, W) per-image masks, got shape {tuple(mask.shape)}")
        self.mask = mask.detach()
        self._cache: dict = {}

    @classmethod
    def random(cls, size, acceleration: float = 4.0, center_lines: int | None = None, *, noise_std: float = 0.0, seed: int = 0) -> "MRI":
        """Random Cartesian sampling (:class:`CartesianMasks`); its own mask ``(H, W)`` drawn from ``seed``,
        per-image ones by :meth:`redraw`."""
        return cls._from_family(CartesianMasks(acceleration, center_lines), size, noise_std, seed)

    @classmethod
    def example(cls, image_size: int = 16, channels: int = 1, noise_std: float = 0.05) -> "MRI":
        """A small instance: Cartesian mask, acceleration 4, ``image_size // 8`` centre lines, seed 0 (redrawable)."""
        return cls.random(image_size, 4, max(1, image_size // 8), noise_std=noise_std)

    def _masks(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(M, W)`` on ``t``'s device and dtype, ``(H, W)`` or ``(B, 1, H, W)``; refreshed when ``self.mask`` is
        replaced or modified in place."""
        key = (t.device, t.dtype)
        hit = self._cache.get(key)
        if hit is None or hit[0] is not self.mask or hit[1] != self.mask._version:
            m = self.mask.to(device=t.device, dtype=t.dtype)
            mu = torch.fft.ifftshift(m, dim=(-2, -1))  # DC at (0, 0): the partner of index k is -k mod size
            partner = torch.fft.fftshift(torch.roll(torch.flip(mu, (-2, -1)), (1, 1), (-2, -1)), dim=(-2, -1))
            weight = 1 + m * (1 - partner)
            if m.ndim == 3:
                m, weight = m.unsqueeze(1), weight.unsqueeze(1)
            hit = self._cache[key] = (self.mask, self.mask._version, m, weight)
        return hit[2], hit[3]

    def _mask(self, t: Tensor) -> Tensor:
        return self._masks(t)[0]

    def _check_batch(self, t: Tensor, name: str) -> Tensor:
        if self.mask.ndim == 3 and t.shape[0] != self.mask.shape[0]:
            raise ValueError(f"{name} holds {t.shape[0]} images but the MRI operator has {self.mask.shape[0]} per-image masks")
        return t

    def check_x(self, x: Tensor) -> Tensor:
        try:
            check_image(x, "x", size=tuple(self.mask.shape[-2:]))
        except ValueError as e:
            raise ValueError(f"{e} (the MRI mask is {tuple(self.mask.shape[-2:])})") from None
        return self._check_batch(x, "x")

    def check_y(self, y: Tensor) -> Tensor:
        h, w = self.mask.shape[-2:]
        return self._check_batch(check_tensor(y, "y", shape=(None, None, h, w, 2)), "y")

    def A(self, x: Tensor) -> Tensor:
        self.check_x(x)
        k = torch.fft.fftshift(torch.fft.fft2(x, norm="ortho"), dim=(-2, -1))
        return torch.view_as_real(k * self._mask(x))

    def A_adjoint(self, y: Tensor) -> Tensor:
        self.check_y(y)
        k = torch.view_as_complex(y.contiguous()) * self._mask(y)
        return torch.fft.ifft2(torch.fft.ifftshift(k, dim=(-2, -1)), norm="ortho").real

    def A_pinv(self, y: Tensor) -> Tensor:
        """The exact pseudo-inverse ``Aᵀ (W ⊙ y)``: zero-filled reconstruction using conjugate symmetry."""
        self.check_y(y)
        return self.A_adjoint(y * self._masks(y)[1].unsqueeze(-1))

    def zero_filled(self, y: Tensor) -> Tensor:
        """The plain zero-filled reconstruction ``Aᵀ y = Re(F⁻¹ shift⁻¹(M ⊙ y))``."""
        return self.A_adjoint(y)

    def back_project(self, y: Tensor) -> Tensor:
        """``V ȳ`` of the measurement-domain KL and alignment (Shoushtari et al.): the zero-filled image ``Aᵀ y``
        (the real part of ``Fᴴ M y``; it differs from :meth:`A_pinv` on columns whose conjugate is not sampled)."""
        return self.A_adjoint(y)

    def __repr__(self) -> str:
        frac = float(self.mask.mean())
        return f"MRI(mask={tuple(self.mask.shape)}, sampled={frac:.2f}, noise_std={self.noise_std:g})"
