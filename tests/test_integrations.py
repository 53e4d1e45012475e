"""The pytorch-ood adapter: lazy import with a clear message when pytorch-ood is missing; the API when present."""

import subprocess
import sys

import pytest
import torch


def test_importing_the_adapter_does_not_import_pytorch_ood():
    code = ("import sys, priorshift, priorshift.integrations.pytorch_ood as m; "
            "assert 'pytorch_ood' not in sys.modules and 'torchvision' not in sys.modules, sorted(sys.modules); print(m.INSTALL_HINT)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "priorshift[ood]" in r.stdout


def test_missing_pytorch_ood_is_a_clear_import_error(monkeypatch):
    import priorshift.integrations.pytorch_ood as adapter
    from priorshift.detectors import MeasurementNorm

    monkeypatch.setitem(sys.modules, "pytorch_ood", None)  # as if it were not installed (None in sys.modules: ImportError)
    monkeypatch.setattr(adapter, "_CLASS", None)
    with pytest.raises(ImportError, match=r"needs pytorch-ood.*pip install \"priorshift\[ood\]\".*torchvision"):
        from priorshift.integrations.pytorch_ood import PriorshiftDetector  # noqa: F401
    with pytest.raises(ImportError, match="priorshift\\[ood\\]"):
        adapter.as_pytorch_ood(MeasurementNorm.example())


@pytest.fixture
def pood():
    return pytest.importorskip("pytorch_ood", reason="pytorch-ood is not installed (pip install 'priorshift[ood]')")


def _loader(x, batch_size=4):
    from torch.utils.data import DataLoader, TensorDataset

    return DataLoader(TensorDataset(x, torch.zeros(x.shape[0], dtype=torch.long)), batch_size=batch_size)


def test_image_detector_behind_the_pytorch_ood_api(pood):
    from pytorch_ood.api import Detector, RequiresFittingException

    from priorshift.analytic import stationary_gaussian
    from priorshift.detectors import DenoisingError, score_batches
    from priorshift.integrations.pytorch_ood import PriorshiftDetector

    prior = stationary_gaussian(8, length_scale=1.5, variance=0.25)
    x_id = prior.sample(24, generator=torch.Generator().manual_seed(0)).float()
    x_ood = x_id + 0.8 * torch.randn(x_id.shape, generator=torch.Generator().manual_seed(1))  # rough images: shifted
    det = PriorshiftDetector(DenoisingError(prior, sigmas=(0.1, 0.3)), seed=7)
    assert isinstance(det, Detector) and det.requires_fit
    with pytest.raises(RequiresFittingException):
        det.predict(x_id[:4])
    assert det.fit(_loader(x_id[:16])) is det
    s_id, s_ood = det.predict(x_id[16:]), det(x_ood[16:])
    assert s_id.shape == (8,) and s_ood.mean() > s_id.mean(), "higher = more OOD"
    ref = score_batches(det.detector, x_id[16:], seed=7)  # the same scores as priorshift's own loop, same seeds
    assert torch.allclose(s_id, ref.score) and det.last_scores.nfe == ref.nfe
    assert torch.equal(det.predict_features(x_id[16:]), s_id), "predict is a deterministic function of the batch"


def test_measurement_detector_measures_images(pood):
    from priorshift.analytic import stationary_gaussian
    from priorshift.detectors import DenoisingError, MeasurementNorm
    from priorshift.integrations.pytorch_ood import as_pytorch_ood
    from priorshift.operators import Inpainting

    prior = stationary_gaussian(8, length_scale=1.5, variance=0.25)
    op = Inpainting.example(image_size=8, noise_std=0.05)
    x = prior.sample(20, generator=torch.Generator().manual_seed(0)).float()
    det = as_pytorch_ood(MeasurementNorm(prior, op), measure=True)
    det.fit_features(x[:12], torch.zeros(12))
    s_id, s_ood = det.predict(x[12:]), det.predict(3 * x[12:])
    assert s_id.shape == (8,) and bool((s_ood > s_id).all())
    with pytest.raises(ValueError, match="scores images already"):
        as_pytorch_ood(DenoisingError(prior), measure=True)
