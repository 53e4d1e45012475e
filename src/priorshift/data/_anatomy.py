"""The abdomen drawn by :func:`priorshift.data.phantoms.ct_phantom` (one axial slice at liver/kidney level).

Intensities are CT numbers mapped through an abdominal window, value = (HU - 40) / 200 (W400 / L40), then
clipped to [-1, 1]: air -1, fat ≈ -0.7, muscle ≈ 0.05, contrast-enhanced liver ≈ 0.3, kidney cortex ≈ 0.7,
bone ≈ 0.8-1. Radiological convention: the patient's right (liver) is on the image's left, anterior is up.
Positions are given in *body-local* coordinates (the body ellipse is the unit disc), sizes in normalized
image units scaled with the body; every draw comes from the one ``rng`` passed in.
"""

from __future__ import annotations

import numpy as np

from ._render import Canvas, full_frame, smooth_field

# Label ids of the ``labels`` map.
AIR, SOFT, FAT, MUSCLE, LIVER, HEPATIC_VESSEL, SPLEEN, KIDNEY, BONE, VESSEL, BOWEL, GAS, PANCREAS = range(13)
LABEL_NAMES = ("air", "soft_tissue", "fat", "muscle", "liver", "hepatic_vessel", "spleen", "kidney", "bone",
               "vessel", "bowel", "gas", "pancreas")


def _harm(rng, k: int, amp: float) -> np.ndarray:
    """``k`` random complex Fourier coefficients (harmonics 2..k+1), amplitude ~ ``amp`` decaying with order."""
    decay = 1.0 / np.arange(1, k + 1) ** 0.7
    return (rng.normal(0, amp, k) + 1j * rng.normal(0, amp, k)) * decay


def draw_abdomen(cv: Canvas, rng: np.random.Generator) -> None:
    """Paint one random abdominal slice onto ``cv`` (image and labels)."""
    U, size = rng.uniform, cv.size
    # ---- body outline and wall layers --------------------------------------------------------------------
    cx, cy = U(-0.03, 0.03), U(0.0, 0.06)
    a = U(0.80, 0.92)
    b = a * U(0.66, 0.78)
    phi = U(-0.06, 0.06)
    s = a / 0.86  # organ scale
    hb = _harm(rng, 3, 0.012)
    flat = U(0.08, 0.16)
    ca, sa = np.cos(phi), np.sin(phi)

    def at(lx, ly):  # body-local -> image coordinates
        return cx + ca * lx * a - sa * ly * b, cy + sa * lx * a + ca * ly * b

    slc_body, body = cv.blob(cx, cy, a, b, phi, hb, flatten=flat)
    cv.paint(slc_body, body, U(0.0, 0.1), SOFT)
    skin, fat_t, wall = 0.022, U(0.04, 0.11), U(0.03, 0.05)
    _, sub = cv.blob(cx, cy, a - skin, b - skin, phi, hb, slc=slc_body, flatten=flat)
    cv.paint(slc_body, sub, U(-0.76, -0.64), FAT)
    _, mus = cv.blob(cx, cy, a - skin - fat_t, b - skin - 0.8 * fat_t, phi, hb, slc=slc_body, flatten=flat)
    cv.paint(slc_body, mus, U(0.0, 0.12), MUSCLE)
    ai, bi = a - skin - fat_t - wall, b - skin - 0.8 * fat_t - wall
    _, cav = cv.blob(cx, cy, ai, bi, phi, hb, slc=slc_body, flatten=flat)
    cv.paint(slc_body, cav, U(-0.62, -0.45), FAT)
    cavity = full_frame(cv, slc_body, cav)
    inner = full_frame(cv, slc_body, mus)

    # ---- posterior wall: paraspinal muscles, spine ---------------------------------------------------------
    vx, vy = at(U(-0.03, 0.03), U(0.36, 0.44))
    rv = 0.085 * s * U(0.9, 1.1)
    for side in (-1, 1):
        px, py = vx + side * 0.17 * s, vy + rv + 0.13 * s
        slc, al = cv.blob(px, py, 0.13 * s, 0.10 * s, phi + side * 0.25, _harm(rng, 2, 0.04))
        cv.paint(slc, al * inner[slc], U(0.02, 0.12), MUSCLE)
        slc, al = cv.blob(vx + side * (rv + 0.055 * s), vy - 0.01, 0.042 * s, 0.055 * s, phi)  # psoas
        cv.paint(slc, al, U(0.03, 0.12), MUSCLE)
    canal_y = vy + rv + 0.045 * s
    bone_v = U(0.92, 1.0)
    for x0, y0, aa, bb, ang in ((vx, canal_y, 0.062 * s, 0.058 * s, 0.0),                   # neural arch
                                (vx, canal_y + 0.085 * s, 0.022 * s, 0.07 * s, 0.0),         # spinous process
                                (vx - 0.085 * s, vy + rv * 0.7, 0.06 * s, 0.02 * s, 0.35),   # transverse
                                (vx + 0.085 * s, vy + rv * 0.7, 0.06 * s, 0.02 * s, -0.35)):
        slc, al = cv.blob(x0, y0, aa, bb, phi + ang)
        cv.paint(slc, al, bone_v, BONE)
    slc, al = cv.blob(vx, canal_y, 0.034 * s, 0.03 * s, phi)
    cv.paint(slc, al, U(-0.2, -0.05), SOFT)  # spinal canal (CSF)
    slc, al = cv.blob(vx, vy, rv, 0.93 * rv, phi, _harm(rng, 2, 0.02))
    cv.paint(slc, al, bone_v, BONE)
    slc, al = cv.blob(vx, vy, rv - 0.022 * s, 0.93 * rv - 0.022 * s, phi)
    cv.paint(slc, al, U(0.62, 0.82) + 0.05 * smooth_field(rng, size, size // 8)[slc], BONE)

    # ---- ribs in the lateral/posterolateral wall ------------------------------------------------------------
    rho_w = 1.0 - (skin + fat_t + 0.5 * wall) / a
    for side in (-1, 1):
        for t in rng.uniform(-0.3, 0.45, rng.integers(2, 5)) * np.pi:
            lx, ly = rho_w * np.cos(t), rho_w * np.sin(t)
            x0, y0 = at(side * lx, ly)
            ang = np.arctan2(b * np.cos(t), -side * a * np.sin(t))
            slc, al = cv.blob(x0, y0, 0.034 * s, 0.02 * s, ang + phi)
            cv.paint(slc, al, U(0.75, 1.0), BONE)

    # ---- liver: right lobe + left lobe, textured, with vessels ------------------------------------------------
    full = cv.full()
    x0, y0 = at(U(-0.52, -0.38), U(-0.12, 0.05))
    _, right = cv.blob(x0, y0, U(0.34, 0.42) * s, U(0.40, 0.50) * s, U(-0.25, 0.25), _harm(rng, 4, 0.05), slc=full)
    x1, y1 = at(U(-0.15, 0.05), U(-0.62, -0.45))
    _, left = cv.blob(x1, y1, U(0.22, 0.32) * s, U(0.10, 0.15) * s, U(-0.4, -0.05), _harm(rng, 3, 0.06), slc=full)
    liver = np.maximum(right, left) * cavity
    lv = U(0.2, 0.36)
    tex = lv + U(0.015, 0.03) * smooth_field(rng, size, max(size // 4, 4)) + 0.02 * smooth_field(rng, size, 5)
    cv.paint(full, liver, tex, LIVER)
    porta = at(U(-0.25, -0.15), U(-0.05, 0.1))
    cand = np.stack(at(rng.uniform(-0.9, 0.1, 48), rng.uniform(-0.8, 0.4, 48)), 1)
    vessels = [p for p in cand if cv.point_alpha(liver, *p) >= 1.0][: rng.integers(4, 10)]
    for px, py in vessels:
        r = U(0.012, 0.028) * s
        slc, al = cv.blob(px, py, r * U(1.0, 2.6), r, np.arctan2(py - porta[1], px - porta[0]))
        cv.paint(slc, al * liver[slc], U(0.45, 0.65), HEPATIC_VESSEL)

    # ---- spleen (crescent), kidneys -------------------------------------------------------------------------
    if U() < 0.9:
        x0, y0 = at(U(0.52, 0.66), U(0.15, 0.4))
        ang = phi + U(0.4, 0.9)
        _, sp = cv.blob(x0, y0, U(0.09, 0.13) * s, U(0.17, 0.24) * s, ang, _harm(rng, 3, 0.05), slc=full)
        _, cut = cv.blob(x0 - 0.12 * s, y0 - 0.05 * s, 0.1 * s, 0.14 * s, ang, slc=full)
        cv.paint(full, sp * (1 - cut) * cavity, U(0.25, 0.4) + 0.012 * smooth_field(rng, size, 6), SPLEEN)
    cortex = U(0.55, 0.78)
    for side in (-1, 1):
        x0, y0 = at(side * U(0.38, 0.48), U(0.25, 0.4))
        kr = U(0.75, 1.05) * s
        ang = phi - side * U(0.3, 0.6)
        slc, al = cv.blob(x0, y0, 0.085 * kr, 0.13 * kr, ang, _harm(rng, 2, 0.03))
        cv.paint(slc, al, cortex + U(-0.03, 0.03), KIDNEY)
        _, al = cv.blob(x0, y0, 0.05 * kr, 0.085 * kr, ang, slc=slc)
        cv.paint(slc, al, cortex - U(0.1, 0.25), KIDNEY)
        slc2, al = cv.blob(x0 - side * 0.05 * kr, y0 - 0.02 * kr, 0.03 * kr, 0.045 * kr, ang)
        cv.paint(slc2, al, U(-0.5, -0.25), FAT)  # renal sinus fat at the hilum

    # ---- great vessels, pancreas ---------------------------------------------------------------------------
    ra = 0.05 * s * U(0.85, 1.15)
    ax, ay = vx + 0.05 * s + U(-0.02, 0.02), vy - rv - ra - U(0.005, 0.02)
    slc, al = cv.blob(ax, ay, ra, ra, 0.0)
    cv.paint(slc, al, U(0.5, 0.72), VESSEL)
    slc, al = cv.blob(vx - 0.13 * s + U(-0.03, 0.01), vy - rv - U(0.02, 0.06), 0.06 * s, 0.042 * s, U(-0.3, 0.3))
    cv.paint(slc, al, U(0.38, 0.52), VESSEL)  # IVC
    if U() < 0.75:
        x0, y0 = ax + U(0.08, 0.16) * s, ay - U(0.1, 0.16) * s
        slc, al = cv.blob(x0, y0, U(0.16, 0.24) * s, U(0.035, 0.05) * s, phi + U(-0.45, 0.0), _harm(rng, 4, 0.08))
        cv.paint(slc, al * cavity[slc], U(0.1, 0.25), PANCREAS)
        slc, al = cv.blob(ax, ay - 0.11 * s, 0.018 * s, 0.018 * s)
        cv.paint(slc, al, U(0.5, 0.7), VESSEL)  # SMA

    # ---- stomach and bowel loops (fluid and gas) ------------------------------------------------------------
    def loop(x0, y0, ra, rb, ang, harm, gas_frac):
        slc, al = cv.blob(x0, y0, ra, rb, ang, harm)
        cv.paint(slc, al * cavity[slc], U(0.1, 0.3), BOWEL)
        wall_t = U(0.018, 0.03) * s
        _, lum = cv.blob(x0, y0, ra - wall_t, rb - wall_t, ang, harm, slc=slc)
        lum = lum * cavity[slc]
        cv.paint(slc, lum, U(-0.2, 0.02), BOWEL)
        if gas_frac > 0:  # gas rises anteriorly (up): an air-fluid level
            level = y0 + max(ra, rb) * (2.0 * gas_frac - 1.0)
            ys = cv.coords[slc[0]][:, None]
            gas = lum * np.clip((level - ys) / cv.px + 0.5, 0.0, 1.0)
            cv.paint(slc, gas, -1.0, GAS)

    x0, y0 = at(U(0.15, 0.45), U(-0.7, -0.45))
    loop(x0, y0, U(0.16, 0.24) * s, U(0.11, 0.16) * s, U(-0.6, 0.6), _harm(rng, 3, 0.05),
         U(0.2, 0.6) if U() < 0.75 else 0.0)
    cand = np.stack(at(rng.uniform(-0.35, 0.75, 24), rng.uniform(-0.75, 0.15, 24)), 1)
    placed = 0
    for px, py in cand:
        i, j = int((py + 1) / cv.px), int((px + 1) / cv.px)
        if not (0 <= i < size and 0 <= j < size) or cv.labels[i, j] != FAT or cavity[i, j] < 1:
            continue
        r = U(0.045, 0.08) * s
        g = U()
        gas = 1.0 if g < 0.25 else (U(0.2, 0.5) if g < 0.45 else 0.0)
        loop(px, py, r * U(1.0, 1.4), r, U(0, np.pi), _harm(rng, 2, 0.04), gas)
        placed += 1
        if placed >= 6:
            break

    # ---- mild correlated noise inside the body -------------------------------------------------------------
    noise = U(0.008, 0.018) * smooth_field(rng, size, max(size // 2, 2))
    cv.image += noise * full_frame(cv, slc_body, body)
    np.clip(cv.image, -1.0, 1.0, out=cv.image)
