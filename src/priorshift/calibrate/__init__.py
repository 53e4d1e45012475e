"""From scores to decisions: conformal p-values with a stated false-alarm rate, block p-values for maps, the
reconstruction and its warning from one sampler pass, and a stream monitor.

* :class:`Conformal` (:mod:`.conformal`): ``Conformal(detector).fit(id_data).pvalues(data)`` for any detector;
  ``.flag(data, alpha=0.05, method="marginal" | "bh")``; family-wise block p-values for maps (max-statistic);
  :func:`full_conformal_pvalues` for small calibration sets and cheap, symmetric fits.
* :func:`monitor` (:mod:`.monitor`): online conformal p-values, the Simple Jumper test martingale and an alarm at
  ``1/alpha`` (Ville: false alarm over the whole stream ≤ alpha).
* :func:`reconstruct` (:mod:`.onepass`): posterior mean, per-pixel spread and KLIP maps from one pass.
"""

from priorshift.calibrate.conformal import METHODS, Conformal, Decision, block_pvalues, conformal_pvalues, flag_pvalues, full_conformal_pvalues
from priorshift.calibrate.monitor import MonitorResult, alarm_index, monitor, online_pvalues, simple_jumper
from priorshift.calibrate.onepass import Reconstruction, reconstruct, reconstruct_batches

__all__ = ["Conformal", "Decision", "conformal_pvalues", "full_conformal_pvalues", "block_pvalues", "flag_pvalues", "METHODS", "monitor", "MonitorResult",
           "online_pvalues", "simple_jumper", "alarm_index", "Reconstruction", "reconstruct", "reconstruct_batches"]
