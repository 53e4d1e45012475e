"""Figures for experiments and reports: heatmaps, score histograms, ROC curves, per-step curves, AUROC vs contrast."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from torch import Tensor
from torch.nn import functional as F

from priorshift.metrics import roc_curve
from priorshift.plotting import pyplot, save_figure

__all__ = ["heatmap_figure", "histogram_figure", "roc_figure", "step_curve_figure", "contrast_figure"]


def _img(ax, x: Tensor, title: str | None = None, cmap="gray", vmin=-1, vmax=1):
    ax.imshow(x.detach().float().cpu().numpy(), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def heatmap_figure(
    measurement: Tensor,
    reconstruction: Tensor,
    maps: Tensor,
    masks: Tensor | None,
    path: str | Path,
    *,
    labels: Sequence[str],
    measurement_title: str = "measurement",
    title: str | None = None,
    map_title: str = "map",
    reconstruction_title: str = "reconstruction",
) -> Path:
    """One row per image: measurement (or its classical reconstruction) → posterior reconstruction → the
    detector's map (upsampled, over the reconstruction) → ground-truth OOD mask (the column is left out when
    ``masks`` is None). Maps share one colour scale, shown by a colour bar, so ID and OOD rows compare; maps of any
    sign (all negative included) and non-finite values are drawn. ``reconstruction_title`` says what the second
    column shows (e.g. an early estimate where sampling stopped).
    ``measurement``/``reconstruction``: (N, 1, H, W); ``maps``: (N, h, w); ``masks``: (N, H, W)."""
    plt = pyplot()
    n, h, w = measurement.shape[0], measurement.shape[-2], measurement.shape[-1]
    up = F.interpolate(maps[:, None].float(), size=(h, w), mode="nearest")[:, 0]
    finite = up[up.isfinite()]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.numel() else (0.0, 1.0)
    vmin = min(0.0, lo)  # 0 for energy maps; signed maps (multiscale KLIP's z-scores) may lie below it
    vmax = hi if hi > vmin else vmin + 1.0
    cols = 4 if masks is not None else 3
    fig, axes = plt.subplots(n, cols, figsize=(1.6 * cols + 0.6, 1.65 * n + (0.4 if title else 0)), squeeze=False)
    overlay = None
    for r in range(n):
        _img(axes[r, 0], measurement[r, 0], measurement_title if r == 0 else None)
        _img(axes[r, 1], reconstruction[r, 0], reconstruction_title if r == 0 else None)
        _img(axes[r, 2], reconstruction[r, 0], map_title if r == 0 else None)
        overlay = axes[r, 2].imshow(up[r].cpu().numpy(), cmap="inferno", alpha=0.65, vmin=vmin, vmax=vmax, interpolation="nearest")
        if masks is not None:
            _img(axes[r, 3], masks[r].float(), "ground truth" if r == 0 else None, cmap="Reds", vmin=0, vmax=1)
        axes[r, 0].set_ylabel(labels[r], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.subplots_adjust(right=0.86)
    bar = fig.colorbar(overlay, cax=fig.add_axes([0.89, 0.2, 0.025, 0.6]))
    bar.ax.tick_params(labelsize=7)
    bar.set_label("map value (shared scale)", fontsize=7)
    return save_figure(fig, path)


def histogram_figure(groups: dict[str, np.ndarray], path: str | Path, title: str = "", xlabel: str = "score (higher = more shifted)") -> Path:
    """Overlaid score histograms, one per group (e.g. ``{"ID": s_id, "OOD": s_ood}``), on shared bins."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(3.8, 2.8))
    values = np.concatenate([np.asarray(v, dtype=float).ravel() for v in groups.values()])
    finite = values[np.isfinite(values)]
    bins = np.histogram_bin_edges(finite, bins=min(30, max(5, finite.size // 4))) if finite.size else 10
    for label, v in groups.items():
        ax.hist(np.asarray(v, dtype=float), bins=bins, alpha=0.55, label=f"{label} (n = {np.asarray(v).size})")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("images", fontsize=8)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def roc_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "") -> Path:
    """ROC curves, one per method: ``{label: (scores_id, scores_ood)}`` (OOD positive)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    for label, (s_id, s_ood) in curves.items():
        fpr, tpr, _ = roc_curve(s_id, s_ood)
        ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
    ax.set_xlabel("false positive rate (ID flagged)")
    ax.set_ylabel("true positive rate (OOD caught)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def step_curve_figure(sigmas: Tensor, curves: dict[str, Tensor], window: tuple[int, int], path: str | Path, title: str = "") -> Path:
    """Mean normalized likelihood-update energy per step (sum over blocks) for each set, window shaded."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 3.0))
    steps = np.arange(len(sigmas))
    for label, c in curves.items():
        m = c.mean(1).numpy()
        ax.plot(steps, m, label=label)
    ax.axvspan(window[0], window[1] - 1, color="0.85", label="window")
    ax.set_yscale("log")
    ax.set_xlabel("step (from the noisy end)")
    ax.set_ylabel("‖Δx_lik / g‖² (mean over images)")
    sec = ax.secondary_xaxis("top", functions=(lambda k: k, lambda k: k))
    ticks = steps[:: max(1, len(steps) // 5)]
    sec.set_xticks(ticks)
    sec.set_xticklabels([f"{float(sigmas[k]):.2g}" for k in ticks], fontsize=7)
    sec.set_xlabel("σ", fontsize=8)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def contrast_figure(contrasts: Sequence[float], series: dict[str, Sequence[float]], path: str | Path, title: str = "", ylabel: str = "AUROC") -> Path:
    """AUROC (or another metric) against lesion contrast, one line per method."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.0, 3.0))
    for label, values in series.items():
        ax.plot(list(contrasts), list(values), marker="o", label=label)
    ax.axhline(0.5, color="0.7", lw=0.8, ls="--")
    ax.set_xlabel("lesion contrast (mean change inside the lesion)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0.3, 1.02)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
