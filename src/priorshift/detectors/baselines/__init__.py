"""The baselines every results table must carry: trivial statistics and the classical diffusion-OOD scores.

A method that does not beat these is not detecting anything its prior knows. (The shipped Fashion-MNIST
prior with KLIP's defaults separates Fashion-MNIST from MNIST at AUROC ≈ 0.5 while the mean of ``y²`` alone
reaches 0.998.) All four follow the detector contract (:mod:`priorshift.detectors.base`); **higher score =
more shifted**; every fitted state lives in ``attr_`` attributes and is fitted on in-distribution data only.

Measurement statistics (``input_kind = "measurements"``, no network, ``nfe = 0``, deterministic):

* ``measurement-norm`` (:class:`MeasurementNorm`): ``t(y) = ‖y‖² / m``, the per-entry mean of ``y²``
  (``m`` entries per measurement).
* ``residual`` (:class:`Residual`): ``t(y) = ‖y − A x̂(y)‖² / m``, the data-consistency residual of a classical
  reconstruction ``x̂`` (filtered back-projection for CT; a smoothness-regularised least-squares
  reconstruction where the operator's pseudo-inverse is exact, see :class:`Residual`).

Both are standardised on ID measurements in the log domain and score **both tails** by default: ``t`` is an
energy, a change of the signal's scale by a factor ``c`` moves ``ln t`` by about ``2 ln c`` whichever way
it goes, so a blank or low-contrast input is as shifted as a saturated one. Real ID statistics are skewed
(Fashion-MNIST's ``ln mean y²`` has skewness −0.7: a long tail of bright garments), so each tail gets its
own scale — a split normal: with ``c = median(ln t)`` and ``s_± = sqrt(mean of (ln t − c)² on that side)``,

    z = (ln t − c) / s_+  if ln t ≥ c,   (ln t − c) / s_−  otherwise;      score = |z|

(Fashion-MNIST vs MNIST through 50% random-pixel inpainting, σ_y = 0.05, fitted on 500 training images, 300 +
300 test images: AUROC 0.994, against 0.93 for the symmetric ``|ln t − mean| / sd`` and 0.998 for the one-sided
score). ``side="upper"`` scores ``(ln t − c) / s_+`` (only too-large values are
shifted); ``log=False`` standardises ``t`` itself.

Image statistics (``input_kind = "images"``, a denoiser ``D(x, σ)``, stochastic: noise ``z ~ N(0, I)`` is
drawn per image from its seed):

* ``denoising-error`` (:class:`DenoisingError`, after DDPM-OOD, Graham et al., "Denoising diffusion models
  for out-of-distribution detection", CVPR Workshops 2023): ``e_k(x) = ‖D(x + σ_k z, σ_k) − x‖²`` at several
  ``σ_k``, z-scored per level on ID images and summed. DDPM-OOD reconstructs with a multi-step PLMS
  sampler from each starting level; here one denoiser call per level (the Tweedie reconstruction), which
  is what the closed form below describes.
* ``score-norm`` (:class:`ScoreNorm`, after MSMA, Mahmood, Oliva & Styner, "Multiscale score matching for
  out-of-distribution detection", ICLR 2021): the vector of score norms ``n_k = ‖s(x + σ_k z, σ_k)‖``,
  ``s = (D − x̃)/σ²``, with a Gaussian density (Ledoit–Wolf-shrunk covariance) fitted on ID vectors; the
  score is the squared Mahalanobis distance.

Closed forms on a Gaussian prior ``N(μ, Σ)``, ``Σ = U diag(λ) Uᵀ`` (the tests' oracles):
``E e_k = tr((Σ⁻¹ + σ_k⁻² I)⁻¹) = Σ_i λ_i σ_k² / (λ_i + σ_k²)`` and ``E n_k² = Σ_i 1 / (λ_i + σ_k²)``; for
``y = M x + σ_y n``, ``E t = (tr(M Σ Mᵀ) + ‖M μ‖²) / m + σ_y²``.

Modules: :mod:`~priorshift.detectors.baselines.measurement` (the measurement statistics) and
:mod:`~priorshift.detectors.baselines.image` (the image statistics); the classical reconstruction the residual
uses is :func:`priorshift.operators.solvers.tikhonov_reconstruction`.
"""

from priorshift.detectors.baselines.image import DenoisingError, ScoreNorm, ledoit_wolf
from priorshift.detectors.baselines.measurement import MeasurementNorm, Residual
from priorshift.operators.solvers import tikhonov_reconstruction

__all__ = ["MeasurementNorm", "Residual", "DenoisingError", "ScoreNorm", "tikhonov_reconstruction", "ledoit_wolf"]
