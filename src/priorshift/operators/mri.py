"""Single-coil Cartesian MRI: ``y = M ⊙ F x + e`` with ``F`` the orthonormal 2-D DFT, k-space **centred**."""

from __future__ import annotations

import torch
from torch import Tensor

from priorshift._checks import check_image, check_tensor
from priorshift.operators.base import LinearOperator
from priorshift.operators.masks import as_size
from priorshift.registry import register

__all__ = ["MRI", "cartesian_mask"]


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


@register("operator", "mri")
class MRI(LinearOperator):
    """``A x = view_as_real(M ⊙ shift(F x))``: ``(B, C, H, W)`` real images → ``(B, C, H, W, 2)`` k-space.

    ``F`` = ``torch.fft.fft2(norm="ortho")`` (unitary), ``shift`` = ``fftshift`` so that both ``y`` and the
    mask are **centred** (DC at ``(H // 2, W // 2)``). ``mask``: ``(H, W)`` of 0/1, 1 = sampled (a leading
    singleton dim is dropped). ``y[..., 0]`` / ``y[..., 1]`` are the real / imaginary parts; with the real inner
    product on that representation the exact adjoint is

        Aᵀ y = Re(F⁻¹ shift⁻¹(M ⊙ view_as_complex(y))).

    Because ``x`` is real, ``F x`` is conjugate-symmetric (``X(-k) = conj X(k)``): a sample at ``k`` also tells
    ``X(-k)``. The exact Moore–Penrose inverse is therefore the zero-filled reconstruction with that symmetry
    used, ``A⁺ y = Aᵀ (W ⊙ y)``, ``W = 2`` where ``k`` is sampled but ``-k`` is not, else 1 (``A Aᵀ`` is
    ``½ I`` on such samples and a projection on conjugate pairs); it equals the plain zero-filled ``Aᵀ y``
    for conjugate-symmetric masks. Unsampled entries of ``y`` carry only noise.
    """

    name = "mri"
    pinv_is_exact = True

    def __init__(self, mask: Tensor, noise_std: float = 0.0):
        super().__init__(noise_std)
        if isinstance(mask, Tensor) and mask.dtype == torch.bool:
            mask = mask.float()
        check_tensor(mask, "mask")
        while mask.ndim > 2 and mask.shape[0] == 1:
            mask = mask[0]
        if mask.is_complex() or mask.ndim != 2:
            raise ValueError(f"mask must be a real (H, W) k-space mask, got shape {tuple(mask.shape)}")
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must contain only 0 (not sampled) and 1 (sampled)")
        self.mask = mask.detach()
        self._cache: dict = {}

    @classmethod
    def example(cls, image_size: int = 16, channels: int = 1, noise_std: float = 0.05) -> "MRI":
        """A small instance: Cartesian mask, acceleration 4, ``image_size // 8`` centre lines, fixed seed 0."""
        g = torch.Generator().manual_seed(0)
        return cls(cartesian_mask(image_size, 4, max(1, image_size // 8), generator=g), noise_std=noise_std)

    def _masks(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(M, W)`` on ``t``'s device and dtype; refreshed when ``self.mask`` is replaced or modified in place."""
        key = (t.device, t.dtype)
        hit = self._cache.get(key)
        if hit is None or hit[0] is not self.mask or hit[1] != self.mask._version:
            m = self.mask.to(device=t.device, dtype=t.dtype)
            mu = torch.fft.ifftshift(m)  # DC at (0, 0): the partner of index k is -k mod size
            partner = torch.fft.fftshift(torch.roll(torch.flip(mu, (0, 1)), (1, 1), (0, 1)))
            hit = self._cache[key] = (self.mask, self.mask._version, m, 1 + m * (1 - partner))
        return hit[2], hit[3]

    def _mask(self, t: Tensor) -> Tensor:
        return self._masks(t)[0]

    def check_x(self, x: Tensor) -> Tensor:
        try:
            return check_image(x, "x", size=tuple(self.mask.shape))
        except ValueError as e:
            raise ValueError(f"{e} (the MRI mask is {tuple(self.mask.shape)})") from None

    def check_y(self, y: Tensor) -> Tensor:
        h, w = self.mask.shape
        return check_tensor(y, "y", shape=(None, None, h, w, 2))

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

    def __repr__(self) -> str:
        frac = float(self.mask.mean())
        return f"MRI(mask={tuple(self.mask.shape)}, sampled={frac:.2f}, noise_std={self.noise_std:g})"
