"""Metrics: dataset-level OOD detection (:mod:`.ood`), localization (:mod:`.localization`) and image quality
(:mod:`.image`). Convention: **higher score = more shifted / more OOD**; OOD is the positive class unless a name
says otherwise. The rank metrics reproduce scikit-learn exactly (it is only a test dependency)."""

from . import image as image, localization as localization, ood as ood  # the submodules, re-exported
from .image import lpips_available, lpips_distance, psnr, ssim, ssim_map
from .localization import BestDice, BlockAUROC, best_dice, block_auroc, block_labels, dice, pixel_auroc
from .ood import (
    aupr_in,
    aupr_out,
    auroc,
    auroc_standard_error,
    fpr_at_95_tpr_id,
    fpr_at_95_tpr_ood,
    fpr_at_tpr,
    ood_metrics,
    paired_rate,
    roc_curve,
)

__all__ = [  # written out (not built from the submodules' lists) so that linters see the re-exports
    "auroc", "aupr_in", "aupr_out", "fpr_at_tpr", "fpr_at_95_tpr_ood", "fpr_at_95_tpr_id", "ood_metrics", "roc_curve",
    "auroc_standard_error", "paired_rate",
    "BlockAUROC", "BestDice", "block_labels", "block_auroc", "pixel_auroc", "dice", "best_dice",
    "psnr", "ssim", "ssim_map", "lpips_available", "lpips_distance",
]
