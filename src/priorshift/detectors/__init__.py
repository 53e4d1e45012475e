"""Detectors: score measurements for distribution shift. **Higher score = more shifted.**

``detector.fit(...)`` (a no-op for calibration-free methods) and ``detector.score(y, ...) -> Scores``.
"""

from priorshift.detectors.klip import KLIP, KLIPAccumulator, aggregate_step_maps

__all__ = ["KLIP", "KLIPAccumulator", "aggregate_step_maps"]
