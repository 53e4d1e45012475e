"""Detectors: score measurements for distribution shift. **Higher score = more shifted.**

``detector.fit(...)`` (a no-op for calibration-free methods) and ``detector.score(y, ...) -> Scores``.
"""

from priorshift.detectors.klip import KLIP, KLIPAccumulator

__all__ = ["KLIP", "KLIPAccumulator"]
