"""Training resumes exactly after a kill; checkpoints are safetensors + JSON; bad checkpoints fail clearly."""

import json

import pytest
import torch
from safetensors.torch import load_file

from priorshift.diffusion import UNetConfig
from priorshift.diffusion.checkpoint import load_prior
from priorshift.diffusion.training import TrainConfig, edm_loss, train

TINY = UNetConfig(image_size=8, widths=(8, 16), embedding_dim=16, groups=4)


def _cfg(**kw):
    return TrainConfig(**({"name": "tiny", "steps": 6, "batch_size": 4, "checkpoint_every": 2, "warmup_steps": 2, "unet": TINY} | kw))


@pytest.fixture
def data():
    return torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_resume_after_kill_equals_uninterrupted(tmp_path, data):
    train(_cfg(), data, tmp_path / "a", progress=False)
    assert train(_cfg(), data, tmp_path / "b", progress=False, stop_at=3) is None  # "killed" after step 3
    train(_cfg(), data, tmp_path / "b", progress=False)
    a = load_file(str(tmp_path / "a" / "train_state.safetensors"))
    b = load_file(str(tmp_path / "b" / "train_state.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_written_prior_loads_and_records_its_training(tmp_path, data):
    path = train(_cfg(), data, tmp_path / "run", progress=False, meta={"command": "priorshift train ..."})
    assert path.suffix == ".safetensors" and path.with_suffix(".json").exists()
    config = json.loads(path.with_suffix(".json").read_text())
    assert config["training"]["steps"] == 6 and config["command"] == "priorshift train ..." and config["unet"]["image_size"] == 8
    D = load_prior(path)
    out = D(torch.zeros(2, 1, 8, 8), torch.tensor([0.5, 2.0]))
    assert out.shape == (2, 1, 8, 8) and out.dtype == torch.float32
    assert load_prior(path.parent) is not None  # a run directory with one prior resolves to it
    with pytest.raises(ValueError, match="trained on 8×8"):
        D(torch.zeros(1, 1, 16, 16), torch.ones(1))


def test_edm_loss_masked_counts_observed_pixels_only(data):
    from priorshift.diffusion import EDMDenoiser, UNet

    D = EDMDenoiser(UNet(TINY))
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    full = edm_loss(D, data[:4], g(), -1.2, 1.2)
    masked = edm_loss(D, data[:4], g(), -1.2, 1.2, mask=mask)
    assert torch.isfinite(full) and torch.isfinite(masked) and not torch.isclose(full, masked)


def test_bad_checkpoints_fail_clearly(tmp_path, data):
    path = train(_cfg(steps=2), data, tmp_path / "run", progress=False)
    # Pickle-based files are refused without being opened.
    pkl = tmp_path / "model.pt"
    pkl.write_bytes(b"not even read")
    with pytest.raises(ValueError, match="pickle"):
        load_prior(pkl)
    # Truncated safetensors.
    bad = tmp_path / "trunc.safetensors"
    bad.write_bytes(path.read_bytes()[:100])
    bad.with_suffix(".json").write_text(path.with_suffix(".json").read_text())
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_prior(bad)
    # Missing config, unknown name, wrong architecture.
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match="no config"):
        load_prior(lone)
    with pytest.raises(ValueError, match="no prior"):
        load_prior("no-such-prior")
    cfg = json.loads(path.with_suffix(".json").read_text())
    cfg["unet"]["widths"] = [8, 32]
    wrong = tmp_path / "wrong.safetensors"
    wrong.write_bytes(path.read_bytes())
    wrong.with_suffix(".json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="do not match the architecture"):
        load_prior(wrong)


def test_training_rejects_mismatched_data(tmp_path):
    with pytest.raises(ValueError, match="training data must be"):
        train(_cfg(), torch.zeros(4, 1, 16, 16), tmp_path / "x", progress=False)
