"""The abdomen drawn by :func:`priorshift.data.phantoms.ct_phantom` (one axial slice at liver/kidney level).

Intensities are CT numbers mapped through an abdominal window, value = (HU - 40) / 200 (W400 / L40), then
clipped to [-1, 1]: air -1, fat ≈ -0.7, muscle ≈ 0.05, contrast-enhanced liver ≈ 0.3, kidney cortex ≈ 0.7,
bone ≈ 0.8-1. Radiological convention: the patient's right (liver) is on the image's left, anterior is up.
Positions are given in *body-local* coordinates (the body ellipse is the unit disc), sizes in normalized
image units scaled with the body; every draw comes from the one ``rng`` passed in.
"""

from __future__ import annotations

import math

import numpy as np

from ._render import Canvas, full_frame, smooth_field

# Label ids of the ``labels`` map.
(AIR, SOFT, FAT, MUSCLE, LIVER, HEPATIC_VESSEL, SPLEEN, KIDNEY, BONE, VESSEL, BOWEL, GAS, PANCREAS,
 GALLBLADDER) = range(14)
LABEL_NAMES = ("air", "soft_tissue", "fat", "muscle", "liver", "hepatic_vessel", "spleen", "kidney", "bone",
               "vessel", "bowel", "gas", "pancreas", "gallbladder")


class _Draws:
    """Scalar uniforms from a pre-drawn pool (fast) and arrays straight from ``rng``; all deterministic."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self._pool: list[float] = []

    def __call__(self, lo: float = 0.0, hi: float = 1.0) -> float:
        if not self._pool:
            self._pool = self.rng.random(256).tolist()[::-1]
        return lo + (hi - lo) * self._pool.pop()

    def harm(self, k: int, amp: float, n: int | None = None) -> np.ndarray:
        """Random complex Fourier coefficients of harmonics 2..k+1 (``(k,)``, or ``(n, k)``), decaying with order."""
        shape = (k,) if n is None else (n, k)
        h = self.rng.normal(0.0, amp, shape + (2,)) / np.arange(1, k + 1)[:, None] ** 0.7
        return h[..., 0] + 1j * h[..., 1]


def _inside(cv: Canvas, mask, xs, ys) -> list:
    """The points ``(x, y)`` that fall on the image (and on ``mask`` when given), in order."""
    xs, ys = np.asarray(xs), np.asarray(ys)
    j = np.floor((xs + 1.0) / cv.px).astype(int)
    i = np.floor((ys + 1.0) / cv.px).astype(int)
    ok = (i >= 0) & (i < cv.size) & (j >= 0) & (j < cv.size)
    if mask is not None:
        ok[ok] = mask[i[ok], j[ok]]
    return list(zip(xs[ok].tolist(), ys[ok].tolist()))


def draw_abdomen(cv: Canvas, rng: np.random.Generator) -> None:
    """Paint one random abdominal slice onto ``cv`` (image and labels)."""
    U, size, px, ramp = _Draws(rng), cv.size, cv.px, cv.ramp
    # ---- body outline and wall layers (one distance map -> skin, subcutaneous fat, muscle, visceral fat) ---
    cx, cy, a = U(-0.03, 0.03), U(0.0, 0.06), U(0.80, 0.92)
    b, phi, flat = a * U(0.66, 0.78), U(-0.06, 0.06), U(0.08, 0.16)
    s = a / 0.86  # organ scale
    ca, sa = math.cos(phi), math.sin(phi)

    def at(lx, ly):  # body-local (unit disc) -> image coordinates
        return cx + ca * lx * a - sa * ly * b, cy + sa * lx * a + ca * ly * b

    slc_b, dist = cv.sdf(cx, cy, a, b, phi, U.harm(3, 0.012), flatten=flat)
    skin, fat_t, wall = 0.022, U(0.04, 0.11), U(0.03, 0.05)
    body, mus = ramp(dist), ramp(dist, (skin + fat_t) / px)
    cav = ramp(dist, (skin + fat_t + wall) / px)
    cv.paint(slc_b, body, U(0.0, 0.1), SOFT)
    cv.paint(slc_b, ramp(dist, skin / px), U(-0.76, -0.64), FAT)
    cv.paint(slc_b, mus, U(0.0, 0.12), MUSCLE)
    cv.paint(slc_b, cav, U(-0.62, -0.45), FAT)
    body, cavity, inner = (full_frame(cv, slc_b, t) for t in (body, cav, mus))

    # ---- posterior wall: paraspinal muscles, psoas, spine ------------------------------------------------
    vx, vy = at(U(-0.03, 0.03), U(0.26, 0.34))
    rv = 0.085 * s * U(0.9, 1.1)
    sides = np.array([-1.0, 1.0])
    for slc, d in cv.sdf_many(vx + sides * 0.17 * s, vy + rv + 0.12 * s, 0.14 * s, 0.11 * s,
                              phi + sides * 0.25, U.harm(2, 0.04, 2)):
        cv.paint(slc, ramp(d) * inner[slc], U(0.02, 0.12), MUSCLE)
    for slc, d in cv.sdf_many(vx + sides * (rv + 0.055 * s), vy - 0.01, 0.042 * s, 0.055 * s, phi):
        cv.paint(slc, ramp(d), U(0.03, 0.12), MUSCLE)  # psoas
    canal_y, bone_v = vy + rv + 0.045 * s, U(0.92, 1.0)
    slc, d = cv.sdf(vx, canal_y, 0.062 * s, 0.058 * s, phi)  # neural arch around the spinal canal (CSF)
    cv.paint(slc, ramp(d) * inner[slc], bone_v, BONE)
    cv.paint(slc, ramp(d, 0.028 * s / px), U(-0.2, -0.05), SOFT)
    for slc, d in cv.sdf_many([vx, vx - 0.085 * s, vx + 0.085 * s],  # spinous and transverse processes
                              [canal_y + 0.075 * s, vy + rv * 0.7, vy + rv * 0.7],
                              [0.02 * s, 0.06 * s, 0.06 * s], [0.055 * s, 0.02 * s, 0.02 * s],
                              [phi, phi + 0.35, phi - 0.35]):
        cv.paint(slc, ramp(d) * inner[slc], bone_v, BONE)
    slc, d = cv.sdf(vx, vy, rv, 0.93 * rv, phi, U.harm(2, 0.02))  # vertebral body: cortex, cancellous bone
    cv.paint(slc, ramp(d), bone_v, BONE)
    cv.paint(slc, ramp(d, 0.022 * s / px), U(0.62, 0.82) + 0.05 * smooth_field(rng, size, size // 8)[slc], BONE)

    # ---- ribs in the lateral/posterolateral wall, following the (flattened) outline ------------------------
    t = rng.uniform(-0.3, 0.45, 8) * np.pi
    side = np.where(np.arange(8) < 4, -1.0, 1.0)
    keep = np.r_[np.arange(4) < rng.integers(1, 4), np.arange(4) < rng.integers(1, 4)]
    t, side = t[keep], side[keep]
    rho_w = 1.0 - flat * np.maximum(np.sin(t), 0.0) ** 3 - (skin + fat_t + 0.5 * wall) / np.hypot(
        a * np.cos(t), b * np.sin(t))
    x0, y0 = at(side * rho_w * np.cos(t), rho_w * np.sin(t))
    ang = np.arctan2(b * np.cos(t), -side * a * np.sin(t)) + phi
    for slc, d in cv.sdf_many(x0, y0, 0.034 * s, 0.02 * s, ang):
        cv.paint(slc, ramp(d) * inner[slc], U(0.75, 1.0), BONE)

    # ---- liver: right lobe + left lobe, textured, with bright vessels radiating from the porta -----------
    x0, y0 = at(U(-0.6, -0.48), U(-0.2, 0.0))
    liver = full_frame(cv, *cv.blob(x0, y0, U(0.27, 0.34) * s, U(0.36, 0.44) * s, U(-0.25, 0.25), U.harm(4, 0.05)))
    x1, y1 = at(U(-0.3, -0.1), U(-0.68, -0.52))
    slc, left = cv.blob(x1, y1, U(0.16, 0.25) * s, U(0.08, 0.12) * s, U(-0.45, -0.1), U.harm(3, 0.06))
    np.maximum(liver[slc], left, out=liver[slc])
    liver *= cavity
    tex = U(0.2, 0.36) + U(0.015, 0.03) * smooth_field(rng, size, max(size // 4, 4))
    tex += 0.02 * smooth_field(rng, size, 5)
    cv.paint(cv.full(), liver, tex, LIVER)
    porta = at(U(-0.25, -0.15), U(-0.05, 0.1))
    ves = _inside(cv, liver >= 1.0, *at(rng.uniform(-0.9, 0.0, 48), rng.uniform(-0.8, 0.3, 48)))
    ves = np.array(ves[: int(U(3, 8))]).reshape(-1, 2)
    if len(ves):
        r = rng.uniform(0.012, 0.028, len(ves)) * s
        ang = np.arctan2(ves[:, 1] - porta[1], ves[:, 0] - porta[0])
        for slc, d in cv.sdf_many(ves[:, 0], ves[:, 1], r * rng.uniform(1.0, 2.6, len(ves)), r, ang):
            cv.paint(slc, ramp(d) * liver[slc], U(0.45, 0.65), HEPATIC_VESSEL)

    if U() < 0.3:  # gallbladder (fluid) in its fossa at the liver's medial edge
        slc, al = cv.blob(*at(U(-0.35, -0.2), U(-0.35, -0.15)), U(0.05, 0.07) * s, U(0.07, 0.1) * s, U(0, np.pi))
        cv.paint(slc, al * cavity[slc], U(-0.22, -0.1), GALLBLADDER)

    # ---- spleen (crescent), kidneys (cortex, medulla, sinus fat) -------------------------------------------
    if U() < 0.9:
        x0, y0 = at(U(0.52, 0.66), U(0.15, 0.4))
        ang = phi + U(0.4, 0.9)
        slc, sp = cv.blob(x0, y0, U(0.09, 0.13) * s, U(0.17, 0.24) * s, ang, U.harm(3, 0.05))
        _, cut = cv.blob(x0 - 0.12 * s, y0 - 0.05 * s, 0.1 * s, 0.14 * s, ang, slc=slc)
        cv.paint(slc, sp * (1 - cut) * cavity[slc], U(0.25, 0.4) + 0.012 * smooth_field(rng, size, 6)[slc], SPLEEN)
    cortex = U(0.55, 0.78)
    kx, ky = at(sides * rng.uniform(0.38, 0.48, 2), rng.uniform(0.25, 0.4, 2))
    kr = rng.uniform(0.75, 1.05, 2) * s
    kang = phi - sides * rng.uniform(0.3, 0.6, 2)
    for k, (slc, d) in enumerate(cv.sdf_many(kx, ky, 0.085 * kr, 0.13 * kr, kang, U.harm(2, 0.03, 2))):
        cv.paint(slc, ramp(d), cortex + U(-0.03, 0.03), KIDNEY)
        cv.paint(slc, ramp(d, 0.035 * kr[k] / px), cortex - U(0.1, 0.25), KIDNEY)  # medulla
    for slc, d in cv.sdf_many(kx - sides * 0.05 * kr, ky - 0.02 * kr, 0.03 * kr, 0.045 * kr, kang):
        cv.paint(slc, ramp(d), U(-0.5, -0.25), FAT)  # renal sinus fat at the hilum

    # ---- great vessels (aorta, IVC, SMA), pancreas ---------------------------------------------------------
    ra = 0.05 * s * U(0.85, 1.15)
    ax, ay = vx + 0.05 * s + U(-0.02, 0.02), vy - rv - ra - U(0.005, 0.02)
    (sa_, da), (si, di), (ss, ds) = cv.sdf_many(
        [ax, vx - 0.13 * s + U(-0.03, 0.01), ax], [ay, vy - rv - U(0.02, 0.06), ay - 0.11 * s],
        [ra, 0.06 * s, 0.018 * s], [ra, 0.042 * s, 0.018 * s], [0.0, U(-0.3, 0.3), 0.0])
    cv.paint(sa_, ramp(da), U(0.5, 0.72), VESSEL)
    cv.paint(si, ramp(di), U(0.38, 0.52), VESSEL)
    if U() < 0.75:
        x0, y0 = ax + U(0.08, 0.16) * s, ay - U(0.1, 0.16) * s
        slc, al = cv.blob(x0, y0, U(0.16, 0.24) * s, U(0.035, 0.05) * s, phi + U(-0.45, 0.0), U.harm(4, 0.08))
        cv.paint(slc, al * cavity[slc], U(0.1, 0.25), PANCREAS)
        cv.paint(ss, ramp(ds), U(0.5, 0.7), VESSEL)

    # ---- stomach and bowel loops: enhancing wall, fluid, gas with an air-fluid level (gas rises: up) ------
    def loop(slc, d, gas_frac, y0, r):
        cw = cavity[slc]
        cv.paint(slc, ramp(d) * cw, U(0.1, 0.3), BOWEL)
        lum = ramp(d, U(0.018, 0.03) * s / px)
        lum *= cw
        cv.paint(slc, lum, U(-0.2, 0.02), BOWEL)
        if gas_frac > 0:
            level = y0 + r * (2.0 * gas_frac - 1.0)
            cv.paint(slc, lum * ramp((level - cv.coords[slc[0]][:, None]) / px), -1.0, GAS)

    x0, y0 = at(U(0.15, 0.45), U(-0.62, -0.4))
    rs = U(0.11, 0.16) * s
    loop(*cv.sdf(x0, y0, U(0.16, 0.24) * s, rs, U(-0.6, 0.6), U.harm(3, 0.05)), U(0.2, 0.6) if U() < 0.75 else 0.0,
         y0, rs)
    cand = _inside(cv, None, *at(rng.uniform(-0.35, 0.75, 24), rng.uniform(-0.75, 0.15, 24)))
    r_all = rng.uniform(0.045, 0.08, len(cand)) * s
    chosen = []
    for (x, y), r in zip(cand, r_all):
        i, j = int((y + 1) / px), int((x + 1) / px)
        if cv.labels[i, j] == FAT and cavity[i, j] >= 1 and all(
                (x - x2) ** 2 + (y - y2) ** 2 > (r + r2) ** 2 for x2, y2, r2 in chosen):
            chosen.append((x, y, r))
            if len(chosen) == 4:
                break
    if chosen:
        lx, ly, lr = np.array(chosen).T
        shapes = cv.sdf_many(lx, ly, lr * rng.uniform(1.0, 1.4, len(lr)), lr, rng.uniform(0, np.pi, len(lr)),
                             U.harm(2, 0.04, len(lr)))
        for (slc, d), y, r in zip(shapes, ly, lr):
            g = U()
            loop(slc, d, 1.0 if g < 0.25 else (U(0.2, 0.5) if g < 0.45 else 0.0), y, 1.4 * r)

    # ---- mild correlated noise inside the body ---------------------------------------------------------------
    cv.image += (U(0.008, 0.018) * smooth_field(rng, size, max(size // 2, 2))) * body
    np.clip(cv.image, -1.0, 1.0, out=cv.image)
