"""Vectorized numpy rendering of soft-edged shapes on a pixel grid (helpers of :mod:`.phantoms` and
:mod:`.artifacts`).

Coordinates are *normalized*: the image spans ``[-1, 1]`` on both axes, ``x`` to the right (columns) and
``y`` downwards (rows); pixel ``j`` has its centre at ``(j + 0.5) * 2 / size - 1``. Every shape returns an
*alpha* (coverage in [0, 1]) computed from an approximate signed distance, with a linear ramp of
``edge`` pixels across the boundary: anti-aliased at native resolution, no supersampling. Shapes are only
evaluated inside their bounding box, so small organs cost little.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

_EPS = 1e-6


@lru_cache(maxsize=64)
def _upsampler(lo: int, size: int) -> np.ndarray:
    """``(size, lo)`` row-normalized Gaussian interpolation matrix (smooth, no grid artifacts)."""
    x = (np.arange(size) + 0.5) / size
    g = (np.arange(lo) + 0.5) / lo
    w = np.exp(-0.5 * ((x[:, None] - g[None, :]) * lo / 0.75) ** 2)
    return (w / w.sum(1, keepdims=True)).astype(np.float32)


def smooth_field(rng: np.random.Generator, size: int, lo: int) -> np.ndarray:
    """A ``(size, size)`` smooth random field with correlation length ~ ``size / lo`` pixels, std ≈ 1."""
    lo = max(2, min(int(lo), size))
    u = _upsampler(lo, size)
    f = u @ rng.standard_normal((lo, lo), dtype=np.float32) @ u.T
    return f / np.float32(f.std() + _EPS)


class Canvas:
    """A ``(size, size)`` float32 image plus an int label map, painted back to front.

    ``paint(slc, alpha, value, label)`` blends ``value`` (scalar or field) over the image with coverage
    ``alpha`` and writes ``label`` where ``alpha >= 0.5``.
    """

    def __init__(self, size: int, background: float = -1.0):
        self.size = int(size)
        self.px = 2.0 / self.size  # one pixel in normalized units
        self.coords = ((np.arange(self.size, dtype=np.float32) + 0.5) * self.px - 1.0).astype(np.float32)
        self.image = np.full((self.size, self.size), background, dtype=np.float32)
        self.labels = np.zeros((self.size, self.size), dtype=np.int8)

    def _box(self, cx: float, cy: float, rad: float):
        s, c, m = self.size, self.coords, rad + 2.0 * self.px
        c0, c1 = np.searchsorted(c, [cx - m, cx + m])
        r0, r1 = np.searchsorted(c, [cy - m, cy + m])
        c0, r0 = max(int(c0), 0), max(int(r0), 0)
        c1, r1 = min(int(c1), s), min(int(r1), s)
        return (slice(r0, max(r1, r0)), slice(c0, max(c1, c0)))

    def full(self):
        return (slice(0, self.size), slice(0, self.size))

    def blob(self, cx, cy, a, b, angle=0.0, harm=None, edge=1.0, slc=None, flatten=0.0):
        """Alpha of a smoothly deformed ellipse.

        ``(cx, cy)`` centre, ``a``/``b`` semi-axes (normalized units) before rotation by ``angle`` (radians);
        ``harm``: complex coefficients ``h_k`` for ``k = 2, 3, ...`` — the boundary radius is modulated by
        ``1 + Σ Re(h_k e^{ikθ})`` (θ the elliptic angle); ``flatten`` > 0 flattens the local ``+b`` side
        (the back of a body). Returns ``(slc, alpha)`` with ``alpha`` float32 over ``slc``.
        """
        hsum = 0.0 if harm is None else float(np.abs(harm).sum())
        if slc is None:
            slc = self._box(cx, cy, max(a, b) * (1.0 + hsum))
        ys = self.coords[slc[0]][:, None] - np.float32(cy)
        xs = self.coords[slc[1]][None, :] - np.float32(cx)
        ca, sa = np.float32(np.cos(angle)), np.float32(np.sin(angle))
        u = (ca * xs + sa * ys) / np.float32(a)
        v = (ca * ys - sa * xs) / np.float32(b)
        rho = np.sqrt(u * u + v * v) + np.float32(_EPS)
        # |∇rho| of the unrotated ellipse, for a first-order signed distance (m - rho) / |∇rho|.
        grad = np.sqrt((u / np.float32(a)) ** 2 + (v / np.float32(b)) ** 2) / rho
        m = np.float32(1.0)
        if harm is not None and len(harm) or flatten:
            z = (u + 1j * v) / rho
            m = np.ones_like(rho)
            if harm is not None:
                zk = z
                for h in harm:
                    zk = zk * z
                    m += (np.complex64(h) * zk).real
            if flatten:
                sv = np.maximum(z.imag, 0)
                m -= np.float32(flatten) * sv * sv * sv
        d = (m - rho) / np.maximum(grad, np.float32(_EPS))
        alpha = np.clip(d / np.float32(edge * self.px) + np.float32(0.5), 0.0, 1.0)
        return slc, alpha.astype(np.float32, copy=False)

    def paint(self, slc, alpha, value, label=None):
        img = self.image[slc]
        img += alpha * (value - img)
        if label is not None:
            self.labels[slc][alpha >= 0.5] = label

    def point_alpha(self, alpha_full: np.ndarray, x: float, y: float) -> float:
        """Value of a full-frame array at normalized point ``(x, y)`` (nearest pixel; 0 outside)."""
        j = int(np.floor((x + 1.0) / self.px))
        i = int(np.floor((y + 1.0) / self.px))
        if 0 <= i < self.size and 0 <= j < self.size:
            return float(alpha_full[i, j])
        return 0.0


def full_frame(canvas: Canvas, slc, alpha) -> np.ndarray:
    """Embed an alpha over ``slc`` into a zero ``(size, size)`` array."""
    out = np.zeros((canvas.size, canvas.size), dtype=np.float32)
    out[slc] = alpha
    return out


def polyline_distance(xs: np.ndarray, ys: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Distance from each grid point ``(ys[:, None], xs[None, :])`` to the polyline ``pts`` ``(K, 2)`` (x, y)."""
    p = np.stack(np.broadcast_arrays(xs[None, :], ys[:, None]), -1).reshape(-1, 1, 2)
    a, b = pts[:-1][None], pts[1:][None]
    ab = b - a
    t = np.clip(((p - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), _EPS), 0.0, 1.0)
    q = a + t[..., None] * ab
    d = np.sqrt(((p - q) ** 2).sum(-1)).min(1)
    return d.reshape(len(ys), len(xs)).astype(np.float32)
