"""Small matplotlib helpers (Agg backend, atomic PNG writes)."""

from __future__ import annotations

from pathlib import Path

import torch

from priorshift.io import atomic_write

__all__ = ["save_image_grid", "save_figure", "pyplot"]


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt




def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Save ``fig`` as PNG atomically (temp file + rename) and close it."""
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png"))
    pyplot().close(fig)
    return path


def save_image_grid(images: torch.Tensor, path: str | Path, *, nrow: int = 8, title: str | None = None) -> Path:
    """A grid of (N, C, H, W) images in [-1, 1] (gray for C = 1) as a PNG."""
    plt = pyplot()
    x = images.detach().float().cpu().clamp(-1, 1)
    n = x.shape[0]
    ncol = min(nrow, n)
    nrows = (n + ncol - 1) // ncol
    fig, axes = plt.subplots(nrows, ncol, figsize=(1.2 * ncol, 1.2 * nrows + (0.3 if title else 0)), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            img = x[k].permute(1, 2, 0).numpy()
            img = img[..., 0] if img.shape[-1] == 1 else (img + 1) / 2
            ax.imshow(img, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(wspace=0.04, hspace=0.04)
    return save_figure(fig, path)
