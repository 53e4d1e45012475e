"""Sparse-view parallel-beam CT: a pure-torch Radon transform as a precomputed sparse system matrix.

Geometry. Pixel ``(i, j)`` of an ``N × N`` image sits at ``(u, v) = (j - (N-1)/2, (N-1)/2 - i)`` (unit
pixels, origin at the centre, ``v`` up). For the angle ``θ`` and detector offset ``s`` (detector bins 1 px
apart, centred), the Radon transform is the line integral

    R x(θ, s) = ∫ x(s·(cos θ, sin θ) + t·(-sin θ, cos θ)) dt,

discretized with Joseph's method (P. M. Joseph, "An improved algorithm for reprojecting rays through pixel
images", IEEE TMI 1982): the ray visits each pixel row (or column, whichever it crosses faster) once,
interpolates linearly between the two nearest pixels there (zero outside the image) and weights by the
path length per row. The weights form a sparse matrix ``S`` (about ``2 N`` non-zeros per ray), built once
and shared between instances of the same geometry, so ``A x = S x`` and ``Aᵀ y = Sᵀ y`` are exact adjoints
by construction, and autograd runs through both (the backward of ``S`` is ``Sᵀ`` and vice versa, to any order).
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings

import torch
from torch import Tensor

from priorshift._checks import check_image, check_tensor
from priorshift.operators.base import LinearOperator
from priorshift.registry import register

__all__ = ["ParallelBeamCT", "radon_matrix"]

_FILTERS = ("ramp", "hann")


@functools.lru_cache(maxsize=8)
def _radon_csr(image_size: int, angles: tuple[float, ...], n_detectors: int) -> tuple[Tensor, Tensor]:
    """``(S, Sᵀ)`` as float64 CPU CSR tensors, ``S``: ``(n_views · n_detectors, N²)``, rows view-major.

    Joseph's method: a ray with ``|cos θ| ≥ |sin θ|`` crosses every pixel row ``k`` once, at the column
    coordinate ``c + s / cos θ - (c - k) tan θ`` (``c = (N-1)/2``); the image is interpolated linearly
    between the two nearest pixels of that row and weighted by the path length per row ``1 / |cos θ|``.
    Other rays step through the columns likewise (row ``c - s / sin θ - (c - k) cot θ``, weight ``1 / |sin θ|``).
    """
    n, d, m = image_size, n_detectors, len(angles) * n_detectors
    c = (n - 1) / 2
    s = (torch.arange(d, dtype=torch.float64) - (d - 1) / 2)[:, None]  # (d, 1)
    k = torch.arange(n, dtype=torch.float64)  # the step along the major axis
    chunk = max(1, 2**20 // (d * n))  # views per chunk: bounds the memory of the intermediate arrays
    keys, vals = [], []
    for v0 in range(0, len(angles), chunk):
        th = torch.tensor(angles[v0 : v0 + chunk], dtype=torch.float64)[:, None, None]
        cos, sin = th.cos(), th.sin()
        by_row = cos.abs() >= sin.abs()
        safe_cos = torch.where(by_row, cos, 1.0)
        safe_sin = torch.where(by_row, 1.0, sin)
        minor = torch.where(by_row, c + s / safe_cos - (c - k) * sin / safe_cos, c - s / safe_sin - (c - k) * cos / safe_sin)
        weight = torch.where(by_row, 1 / safe_cos.abs(), 1 / safe_sin.abs())  # (views, 1, 1)
        f0 = minor.floor()
        frac = (minor - f0).unsqueeze(-1)
        w = torch.cat([1 - frac, frac], -1) * weight.unsqueeze(-1)  # (views, d, n, 2)
        near = f0.long().unsqueeze(-1) + torch.tensor([0, 1])
        major = k.long()[:, None].expand_as(near)
        pixel = torch.where(by_row.unsqueeze(-1), major * n + near, near * n + major)
        row = torch.arange(v0 * d, v0 * d + th.shape[0] * d).view(-1, d, 1, 1)
        keep = (near >= 0) & (near < n) & (w > 0)
        key, order = torch.sort((row * (n * n) + pixel)[keep])  # (row, col) order; entries are distinct
        keys.append(key)
        vals.append(w[keep][order])
    key, val = torch.cat(keys), torch.cat(vals)
    rows, cols = key // (n * n), key % (n * n)
    by_col = torch.sort(cols, stable=True).indices  # (col, row) order, for Sᵀ
    return _csr(rows, cols, val, (m, n * n)), _csr(cols[by_col], rows[by_col], val[by_col], (n * n, m))


def _csr(rows: Tensor, cols: Tensor, vals: Tensor, shape: tuple[int, int]) -> Tensor:
    """A CSR tensor from distinct COO entries sorted by (row, col)."""
    crow = torch.zeros(shape[0] + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=shape[0]), 0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, cols, vals, shape, check_invariants=False)


def radon_matrix(image_size: int, angles, n_detectors: int) -> Tensor:
    """The float64 CSR system matrix ``S`` of :class:`ParallelBeamCT` (``(n_views · n_detectors, N²)``)."""
    return _radon_csr(int(image_size), tuple(float(a) for a in angles), int(n_detectors))[0]


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
    [0, π)). ``n_detectors`` defaults to ``ceil(√2 N)``, rounded up to the parity of ``N`` so that at θ = 0
    and π/2 the bins line up with pixel columns / rows; every ray through the image is measured (the
    diagonal is covered); bins are 1 px wide. Sinogram values are line integrals in pixel units,
    so they scale with ``N``; choose ``noise_std`` accordingly.

    ``A_pinv(y)`` is filtered back-projection (:meth:`fbp`): the classical reconstruction, *not* the exact
    Moore–Penrose inverse (which is ill-conditioned for sparse views); :meth:`pinv_damped` gives the minimum-norm
    least-squares solution by conjugate gradients.

    The system matrix is moved to ``x``'s device and dtype on first use and cached per (device, dtype).
    """

    name = "ct"

    def __init__(self, image_size: int, n_views: int, n_detectors: int | None = None, noise_std: float = 0.0, angles=None):
        super().__init__(noise_std)
        if not isinstance(image_size, numbers.Integral) or image_size < 2:
            raise ValueError(f"image_size must be an int ≥ 2, got {image_size!r}")
        if not isinstance(n_views, numbers.Integral) or n_views < 1:
            raise ValueError(f"n_views must be a positive int, got {n_views!r}")
        image_size, n_views = int(image_size), int(n_views)
        if n_detectors is None:
            n_detectors = math.ceil(math.sqrt(2) * image_size)
            n_detectors += (n_detectors - image_size) % 2  # same parity as N: bins line up with pixel columns at θ = 0
        if not isinstance(n_detectors, numbers.Integral) or n_detectors < 1:
            raise ValueError(f"n_detectors must be a positive int, got {n_detectors!r}")
        n_detectors = int(n_detectors)
        if angles is None:
            angles = torch.arange(n_views, dtype=torch.float64) * math.pi / n_views
        angles = torch.as_tensor(angles, dtype=torch.float64).flatten()
        if angles.numel() != n_views or not bool(torch.isfinite(angles).all()):
            raise ValueError(f"angles must be {n_views} finite values in radians (one per view), got {angles.numel()}")
        self.image_size, self.n_views, self.n_detectors = image_size, n_views, n_detectors
        self.angles = angles
        self._S, self._St = _radon_csr(image_size, tuple(angles.tolist()), n_detectors)
        self._cache: dict = {}

    @classmethod
    def example(cls, image_size: int = 16, channels: int = 1, noise_std: float = 0.05) -> "ParallelBeamCT":
        """A small sparse-view instance: 8 views, default detector count."""
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
        """Frequency response of the discrete ramp filter (Kak & Slaney 1988, ch. 3: ``h(0) = 1/4``, ``h(n odd) = -1/(π n)²``, else 0), padded length ``P``."""
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
