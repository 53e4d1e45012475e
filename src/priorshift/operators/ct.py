"""Sparse-view parallel-beam CT: a pure-torch Radon transform as a precomputed sparse system matrix.

Geometry. Pixel ``(i, j)`` of an ``N × N`` image sits at ``(u, v) = (j - (N-1)/2, (N-1)/2 - i)`` (unit
pixels, origin at the centre, ``v`` up). For the angle ``θ`` and detector offset ``s`` (detector bins 1 px
apart, centred), the Radon transform is the line integral

    R x(θ, s) = ∫ x(s·(cos θ, sin θ) + t·(-sin θ, cos θ)) dt,

discretized ray-driven (Joseph-style, cf. Joseph 1982, IEEE TMI): ``x`` is interpolated bilinearly (zero
outside the image) at points ``0.5`` px apart along each ray, each weighted by the step length. The weights
form a sparse matrix ``S`` built once (and shared between instances with the same geometry), so ``A x = S x``
and ``Aᵀ y = Sᵀ y`` are exact adjoints by construction and autograd runs through both (backward of ``S`` is
``Sᵀ`` and vice versa, to any order). Memory: about ``3 N`` non-zeros per ray.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from priorshift._checks import check_image, check_tensor
from priorshift.operators.base import LinearOperator
from priorshift.registry import register

__all__ = ["ParallelBeamCT", "radon_matrix"]

_FILTERS = ("ramp", "hann")


@functools.lru_cache(maxsize=8)
def _radon_csr(image_size: int, angles: tuple[float, ...], n_detectors: int, step: float) -> tuple[Tensor, Tensor]:
    """``(S, Sᵀ)`` as float64 CPU CSR tensors, ``S``: ``(n_views · n_detectors, N²)``, rows view-major."""
    n, d = image_size, n_detectors
    c = (n - 1) / 2
    s = torch.arange(d, dtype=torch.float64) - (d - 1) / 2
    half = math.sqrt(2) * n / 2 + 1  # half-length of the ray segment that can meet the image
    n_t = 2 * math.ceil(half / step)
    t = (torch.arange(n_t, dtype=torch.float64) - (n_t - 1) / 2) * step
    rows, cols, vals = [], [], []
    for v, theta in enumerate(angles):
        cos, sin = math.cos(theta), math.sin(theta)
        ci = c - (s[:, None] * sin + t[None, :] * cos)  # row coordinate of each sample, (d, n_t)
        cj = c + (s[:, None] * cos - t[None, :] * sin)  # column coordinate
        i0, j0 = ci.floor(), cj.floor()
        fi, fj = ci - i0, cj - j0
        ray = (v * d + torch.arange(d)).unsqueeze(1).expand(d, n_t)
        for di, dj, w in ((0, 0, (1 - fi) * (1 - fj)), (0, 1, (1 - fi) * fj), (1, 0, fi * (1 - fj)), (1, 1, fi * fj)):
            ii, jj = (i0 + di).long(), (j0 + dj).long()
            keep = (ii >= 0) & (ii < n) & (jj >= 0) & (jj < n) & (w > 0)
            rows.append(ray[keep])
            cols.append(ii[keep] * n + jj[keep])
            vals.append(w[keep] * step)
    idx = torch.stack([torch.cat(rows), torch.cat(cols)])
    S = torch.sparse_coo_tensor(idx, torch.cat(vals), (len(angles) * d, n * n)).coalesce()
    St = torch.sparse_coo_tensor(S.indices().flip(0), S.values(), (n * n, len(angles) * d)).coalesce()
    return S.to_sparse_csr(), St.to_sparse_csr()


def radon_matrix(image_size: int, angles, n_detectors: int, step: float = 0.5) -> Tensor:
    """The float64 CSR system matrix ``S`` of :class:`ParallelBeamCT` (``(n_views · n_detectors, N²)``)."""
    return _radon_csr(int(image_size), tuple(float(a) for a in angles), int(n_detectors), float(step))[0]


class _SparseMatmul(torch.autograd.Function):
    """``S @ X`` for a constant sparse ``S``; the backward is ``Sᵀ @ G`` (itself differentiable)."""

    @staticmethod
    def forward(ctx, X: Tensor, S: Tensor, St: Tensor) -> Tensor:
        ctx.mats = (S, St)
        return S @ X

    @staticmethod
    def backward(ctx, G: Tensor):
        S, St = ctx.mats
        return _SparseMatmul.apply(G.contiguous(), St, S), None, None


@register("operator", "ct")
class ParallelBeamCT(LinearOperator):
    """Sparse-view parallel-beam CT: ``(B, C, N, N)`` images → ``(B, C, n_views, n_detectors)`` sinograms.

    ``angles`` (radians, length ``n_views``) default to ``π k / n_views``, ``k = 0 … n_views-1`` (uniform in
    [0, π)). ``n_detectors`` defaults to ``ceil(√2 N)`` rounded up to odd, so every ray through the image is
    measured (the diagonal is covered); bins are 1 px wide. Sinogram values are line integrals in pixel units,
    so they scale with ``N``; choose ``noise_std`` accordingly.

    ``A_pinv(y)`` is filtered back-projection (:meth:`fbp`): the classical reconstruction, *not* the exact
    Moore–Penrose inverse (which is ill-conditioned for sparse views); :meth:`pinv_cg` gives the minimum-norm
    least-squares solution by conjugate gradients.

    The system matrix is moved to ``x``'s device and dtype on first use and cached per (device, dtype).
    """

    name = "ct"

    def __init__(self, image_size: int, n_views: int, n_detectors: int | None = None, noise_std: float = 0.0, angles=None):
        super().__init__(noise_std)
        if not isinstance(image_size, int) or image_size < 2:
            raise ValueError(f"image_size must be an int ≥ 2, got {image_size!r}")
        if not isinstance(n_views, int) or n_views < 1:
            raise ValueError(f"n_views must be a positive int, got {n_views!r}")
        if n_detectors is None:
            n_detectors = math.ceil(math.sqrt(2) * image_size)
            n_detectors += 1 - n_detectors % 2
        if not isinstance(n_detectors, int) or n_detectors < 1:
            raise ValueError(f"n_detectors must be a positive int, got {n_detectors!r}")
        if angles is None:
            angles = torch.arange(n_views, dtype=torch.float64) * math.pi / n_views
        angles = torch.as_tensor(angles, dtype=torch.float64).flatten()
        if angles.numel() != n_views or not bool(torch.isfinite(angles).all()):
            raise ValueError(f"angles must be {n_views} finite values in radians (one per view), got {angles.numel()}")
        self.image_size, self.n_views, self.n_detectors = image_size, n_views, n_detectors
        self.angles = angles
        self._S, self._St = _radon_csr(image_size, tuple(angles.tolist()), n_detectors, 0.5)
        self._cache: dict = {}

    @classmethod
    def example(cls, image_size: int = 16, channels: int = 1, noise_std: float = 0.05) -> "ParallelBeamCT":
        return cls(image_size=image_size, n_views=8, noise_std=noise_std)

    # -- validation -----------------------------------------------------------------------------------
    def check_x(self, x: Tensor) -> Tensor:
        return check_image(x, "x", size=(self.image_size, self.image_size))

    def check_y(self, y: Tensor) -> Tensor:
        return check_tensor(y, "y", shape=(None, None, self.n_views, self.n_detectors))

    # -- the operator ---------------------------------------------------------------------------------
    def _mats(self, t: Tensor) -> tuple[Tensor, Tensor]:
        key = (t.device, t.dtype)
        mats = self._cache.get(key)
        if mats is None:
            mats = self._cache[key] = (self._S.to(device=t.device, dtype=t.dtype), self._St.to(device=t.device, dtype=t.dtype))
        return mats

    @staticmethod
    def _apply(t: Tensor, S: Tensor, St: Tensor, out_shape: tuple[int, int]) -> Tensor:
        b, c = t.shape[:2]
        cols = t.reshape(b * c, -1).T.contiguous()  # (n_in, B·C)
        return _SparseMatmul.apply(cols, S, St).T.reshape(b, c, *out_shape)

    def A(self, x: Tensor) -> Tensor:
        self.check_x(x)
        S, St = self._mats(x)
        return self._apply(x, S, St, (self.n_views, self.n_detectors))

    def A_adjoint(self, y: Tensor) -> Tensor:
        self.check_y(y)
        S, St = self._mats(y)
        return self._apply(y, St, S, (self.image_size, self.image_size))

    # -- reconstruction -------------------------------------------------------------------------------
    def _filter(self, y: Tensor, name: str) -> tuple[Tensor, int]:
        """Frequency response of the discrete ramp filter (Kak & Slaney 1988, Eq. 3.61), padded length ``P``."""
        p = max(64, 2 ** math.ceil(math.log2(2 * self.n_detectors)))
        key = (y.device, y.dtype, name, p)
        H = self._cache.get(key)
        if H is None:
            k = torch.arange(p, dtype=torch.float64)
            k = torch.minimum(k, p - k)  # circular distance
            h = torch.where(k % 2 == 1, -1.0 / (math.pi * k.clamp_min(1)) ** 2, torch.zeros_like(k))
            h[0] = 0.25
            H = torch.fft.rfft(h).real
            if name == "hann":
                H = H * 0.5 * (1 + torch.cos(2 * math.pi * torch.fft.rfftfreq(p, dtype=torch.float64)))
            H = self._cache[key] = H.to(device=y.device, dtype=y.dtype)
        return H, p

    def fbp(self, y: Tensor, filter: str = "ramp") -> Tensor:
        """Filtered back-projection ``(π / n_views) · Aᵀ (h ⊛ y)``, ``(B, C, n_views, n_det) → (B, C, N, N)``.

        ``h`` is the band-limited ramp filter (``|ω|`` up to Nyquist, defined in space so the DC gain is
        right), optionally times a Hann window (``filter="hann"``: less noise, less resolution), applied along
        the detector axis by FFT with zero padding to ``P ≥ 2 n_det`` (no wrap-around). The ``π / n_views``
        factor assumes angles spread uniformly over [0, π); the result is then on ``x``'s intensity scale.
        """
        if filter not in _FILTERS:
            raise ValueError(f"unknown FBP filter {filter!r}; choose one of {', '.join(_FILTERS)}")
        self.check_y(y)
        H, p = self._filter(y, filter)
        q = torch.fft.irfft(torch.fft.rfft(y, n=p) * H, n=p)[..., : self.n_detectors]
        return self.A_adjoint(q) * (math.pi / self.n_views)

    def A_pinv(self, y: Tensor) -> Tensor:
        """Filtered back-projection with the ramp filter (see :meth:`fbp`); not the exact pseudo-inverse."""
        return self.fbp(y)

    def __repr__(self) -> str:
        return (
            f"ParallelBeamCT(image_size={self.image_size}, n_views={self.n_views}, "
            f"n_detectors={self.n_detectors}, noise_std={self.noise_std:g})"
        )
