"""Vectorized numpy rendering of soft-edged shapes on a pixel grid (helpers of :mod:`.phantoms` and
:mod:`.artifacts`).

Coordinates are *normalized*: the image spans ``[-1, 1]`` on both axes, ``x`` to the right (columns) and
``y`` downwards (rows); pixel ``j`` has its centre at ``(j + 0.5) * 2 / size - 1``. Every shape returns an
*alpha* (coverage in [0, 1]) computed from an approximate signed distance, with a linear ramp of
``edge`` pixels across the boundary: anti-aliased at native resolution, no supersampling. Shapes are only
evaluated inside their bounding box, so small organs cost little.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

_EPS = 1e-6


@lru_cache(maxsize=64)
def _band(lo: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """5-tap Gaussian interpolation from ``lo`` cells to ``size`` pixels (σ = 0.75 cells): tap indices and
    weights ``(size, 5)`` and the same as a dense ``(size, lo)`` matrix; rows have unit L2 norm, so that
    upsampled i.i.d. normals have unit variance."""
    x = (np.arange(size) + 0.5) / size * lo - 0.5  # pixel centres in cell-index units
    j = np.round(x).astype(np.intp)[:, None] + np.arange(-2, 3)[None, :]
    w = np.exp(-0.5 * ((x[:, None] - j) / 0.75) ** 2)
    w[(j < 0) | (j >= lo)] = 0.0
    w /= np.sqrt((w * w).sum(1, keepdims=True))
    j = np.clip(j, 0, lo - 1)
    dense = np.zeros((size, lo))
    np.add.at(dense, (np.repeat(np.arange(size), 5), j.ravel()), w.ravel())
    return j, w.astype(np.float32), dense.astype(np.float32)


def smooth_field(rng: np.random.Generator, size: int, lo: int) -> np.ndarray:
    """A ``(size, size)`` smooth random field, unit variance per pixel, correlation length ~ ``size / lo`` px.

    Separable 5-tap Gaussian interpolation of ``lo x lo`` normals: by matrix products while they are small
    enough for OpenBLAS to run them single-threaded (its threads stall badly on a busy machine), else by
    banded element-wise sums (same weights, same result up to rounding)."""
    lo = max(2, min(int(lo), size))
    j, w, dense = _band(lo, size)
    n = rng.standard_normal((lo, lo), dtype=np.float32)
    if size * size * lo <= 262144:
        return dense @ n @ dense.T
    r = n[j[:, 0]] * w[:, :1]
    for t in range(1, 5):
        r += n[j[:, t]] * w[:, t:t + 1]
    f = r[:, j[:, 0]] * w[:, 0]
    for t in range(1, 5):
        f += r[:, j[:, t]] * w[:, t]
    return f


def _distance(u, v, pa2, pb2, pc2, harm, flatten):
    """Approximate signed distance in pixels (positive inside) to the boundary ``ρ = m(θ)``, ``ρ = |(u, v)|``.

    ``pa2 = (px/a)²``, ``pb2 = (px/b)²``, ``pc2 = (px/max(a, b))²`` (``|∇ρ| = |(u/a, v/b)| / ρ``); ``harm``:
    complex coefficients of harmonics 2, 3, ... or ``None``; ``flatten``: see :meth:`Canvas.sdf`.
    Plain ellipses use ``(1 - ρ²) / |∇ρ²|`` (no square root of ρ; exact to first order at the boundary),
    modulated ones ``(m - ρ) / |∇ρ|``.
    """
    u2, v2 = u * u, v * v
    r2 = u2 + v2
    u2 *= pa2
    v2 *= pb2
    u2 += v2
    u2 += 1e-12 * pc2  # finite at the centre
    if not harm and not flatten:
        np.sqrt(u2, out=u2)
        u2 *= 2.0
        d = 1.0 - r2
        d /= u2
        return d
    rho = np.sqrt(r2)
    r2 += 1e-12
    r2 /= u2
    np.sqrt(r2, out=r2)  # rho / (px |∇rho|)
    z = u + 1j * v
    z /= rho + _EPS  # e^{iθ}, θ the elliptic angle
    d = np.ones_like(rho)
    zk = z
    for h in harm or ():
        zk = zk * z
        d += (h * zk).real
    if flatten:
        sv = np.maximum(z.imag, 0.0)
        d -= flatten * sv * sv * sv
    d -= rho
    d *= r2
    return d


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
        s, m, px = self.size, rad + 2.0 * self.px, self.px
        c0, c1 = math.ceil((cx - m + 1.0) / px - 0.5), math.floor((cx + m + 1.0) / px - 0.5) + 1
        r0, r1 = math.ceil((cy - m + 1.0) / px - 0.5), math.floor((cy + m + 1.0) / px - 0.5) + 1
        c0, r0 = min(max(c0, 0), s), min(max(r0, 0), s)
        return (slice(r0, min(max(r1, r0), s)), slice(c0, min(max(c1, c0), s)))

    def full(self):
        return (slice(0, self.size), slice(0, self.size))

    def sdf(self, cx, cy, a, b, angle=0.0, harm=None, slc=None, flatten=0.0):
        """Approximate signed distance **in pixels** (positive inside) to a smoothly deformed ellipse.

        ``(cx, cy)`` centre, ``a``/``b`` semi-axes (normalized units) before rotation by ``angle`` (radians);
        ``harm``: complex coefficients ``h_k`` for ``k = 2, 3, ...`` — the boundary radius is modulated by
        ``1 + Σ Re(h_k e^{ikθ})`` (θ the elliptic angle); ``flatten`` > 0 flattens the local ``+b`` side
        (the back of a body). Returns ``(slc, d)``, ``d`` float32 over the bounding box ``slc``.
        """
        if slc is None:
            hsum = 0.0 if harm is None else float(np.abs(harm).sum())
            slc = self._box(cx, cy, max(a, b) * (1.0 + hsum))
        ys = self.coords[slc[0]] - cy
        xs = self.coords[slc[1]] - cx
        ca, sa, ia, ib = math.cos(angle), math.sin(angle), 1.0 / a, 1.0 / b
        u = np.add.outer(ys * (sa * ia), xs * (ca * ia))
        v = np.add.outer(ys * (ca * ib), xs * (-sa * ib))
        hs = None if harm is None or not len(harm) else [complex(h) for h in harm]
        return slc, _distance(u, v, (ia * self.px) ** 2, (ib * self.px) ** 2, min(ia, ib) ** 2 * self.px ** 2,
                              hs, flatten)

    def sdf_many(self, cx, cy, a, b, angle=0.0, harm=None):
        """:meth:`sdf` of ``K`` shapes (scalars or length-``K`` sequences; ``harm`` ``(K, n)``): a list of
        ``(slc, d)``. (A loop: numpy's broadcasting overhead on tiny arrays beats stacking them.)"""
        cols = [t.tolist() if isinstance(t, np.ndarray) else t for t in (cx, cy, a, b, angle)]
        k = max(len(t) if isinstance(t, (list, tuple)) else 1 for t in cols)
        cols = [t if isinstance(t, (list, tuple)) else [t] * k for t in cols]
        hs = [None] * k if harm is None else list(harm)
        return [self.sdf(x, y, aa, bb, an, h) for x, y, aa, bb, an, h in zip(*cols, hs)]

    @staticmethod
    def ramp(d, inset=0.0, edge=1.0):
        """Coverage from a signed distance ``d`` (pixels): boundary moved ``inset`` px inwards, ramp ``edge`` px."""
        a = d + (0.5 - inset) if edge == 1.0 else (d - inset) * (1.0 / edge) + 0.5
        np.maximum(a, 0.0, out=a)
        return np.minimum(a, 1.0, out=a)

    def blob(self, cx, cy, a, b, angle=0.0, harm=None, edge=1.0, slc=None, flatten=0.0):
        """Coverage (alpha in [0, 1]) of :meth:`sdf`'s shape with an ``edge``-pixel ramp; ``(slc, alpha)``."""
        slc, d = self.sdf(cx, cy, a, b, angle, harm, slc, flatten)
        d += 0.5 * edge
        d *= 1.0 / edge
        return slc, np.minimum(np.maximum(d, 0.0, out=d), 1.0, out=d)

    def paint(self, slc, alpha, value, label=None):
        img = self.image[slc]
        delta = value - img
        delta *= alpha
        img += delta
        if label is not None:
            self.labels[slc][alpha >= 0.5] = label


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


def pixel_blob(shape, cy: float, cx: float, ry: float, rx: float, angle: float = 0.0, harm=None, edge: float = 1.0):
    """Coverage of a (deformed) ellipse in **pixel units** (pixel ``(i, j)`` centred at ``(i, j)``) on an
    ``(H, W)`` grid: ``(slc, alpha)`` over its bounding box (clipped to the grid; may be empty)."""
    h, w = shape
    rad = max(rx, ry) * (1.0 + (0.0 if harm is None else float(np.abs(harm).sum()))) + edge + 1.0
    r0, r1 = max(int(math.floor(cy - rad)), 0), min(int(math.ceil(cy + rad)) + 1, h)
    c0, c1 = max(int(math.floor(cx - rad)), 0), min(int(math.ceil(cx + rad)) + 1, w)
    slc = (slice(r0, max(r1, r0)), slice(c0, max(c1, c0)))
    ys = np.arange(slc[0].start, slc[0].stop, dtype=np.float32) - cy
    xs = np.arange(slc[1].start, slc[1].stop, dtype=np.float32) - cx
    ca, sa = math.cos(angle), math.sin(angle)
    u = np.add.outer(ys * (sa / rx), xs * (ca / rx))
    v = np.add.outer(ys * (ca / ry), xs * (-sa / ry))
    hs = None if harm is None or not len(harm) else [complex(t) for t in harm]
    d = _distance(u, v, rx ** -2, ry ** -2, max(rx, ry) ** -2, hs, 0.0)
    return slc, Canvas.ramp(d, 0.0, edge)


def pixel_star(shape, cy, cx, r_out, r_in, rot, edge):
    """Coverage of a 5-point star (outer radius ``r_out``, inner ``r_in`` px, rotated ``rot``) centred at
    ``(cy, cx)`` in pixel units on an ``(H, W)`` grid: ``(slc, alpha)``."""
    h, w = shape
    r0, r1 = max(int(cy - r_out - 2), 0), min(int(cy + r_out + 3), h)
    c0, c1 = max(int(cx - r_out - 2), 0), min(int(cx + r_out + 3), w)
    slc = (slice(r0, max(r1, r0)), slice(c0, max(c1, c0)))
    ang = rot + np.arange(11) * (np.pi / 5)
    rad = np.where(np.arange(11) % 2 == 0, r_out, r_in)
    pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1)
    xs, ys = np.arange(c0, slc[1].stop, dtype=float), np.arange(r0, slc[0].stop, dtype=float)
    dist = polyline_distance(xs, ys, pts)
    dy, dx = ys[:, None] - cy, xs[None, :] - cx
    a = np.pi / 5
    phi = np.mod(np.arctan2(dy, dx) - rot, 2 * a)
    phi = np.where(phi > a, 2 * a - phi, phi)
    r_edge = r_out * r_in * np.sin(a) / (r_in * np.sin(a - phi) + r_out * np.sin(phi))
    signed = np.where(np.hypot(dy, dx) <= r_edge, dist, -dist).astype(np.float32)
    return slc, Canvas.ramp(signed, 0.0, edge)


_T = np.linspace(0.0, 1.0, 48)[:, None]
_BERNSTEIN = np.hstack([(1 - _T) ** 3, 3 * _T * (1 - _T) ** 2, 3 * _T ** 2 * (1 - _T), _T ** 3])


def pixel_curve(shape, ctrl: np.ndarray, width: float, edge: float = 1.0):
    """Coverage of a cubic Bézier stroke (control points ``ctrl`` ``(4, 2)`` as (x, y) pixels, ``width`` px)
    on an ``(H, W)`` grid: ``(slc, alpha)``."""
    h, w = shape
    pts = _BERNSTEIN @ ctrl
    m = 0.5 * width + edge + 1
    r0, r1 = max(int(pts[:, 1].min() - m), 0), min(int(pts[:, 1].max() + m) + 1, h)
    c0, c1 = max(int(pts[:, 0].min() - m), 0), min(int(pts[:, 0].max() + m) + 1, w)
    slc = (slice(r0, max(r1, r0)), slice(c0, max(c1, c0)))
    d = polyline_distance(np.arange(c0, slc[1].stop, dtype=float), np.arange(r0, slc[0].stop, dtype=float), pts)
    return slc, Canvas.ramp(0.5 * width - d, 0.0, edge)
