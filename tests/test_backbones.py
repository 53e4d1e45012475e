"""Backbones are registry entries: a new one trains, saves and loads through train / load_prior with no other change."""

import json
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from priorshift import registry
from priorshift.diffusion import EDMDenoiser, UNetConfig
from priorshift.diffusion.backbones import Backbone, backbone_of, get_backbone
from priorshift.diffusion.checkpoint import WEIGHTS_DIR, bundled_priors, load_prior, save_prior
from priorshift.diffusion.training import TrainConfig, train

TINY = UNetConfig(image_size=8, widths=(8, 16), embedding_dim=16, groups=4)


@dataclass(frozen=True)
class ToyConfig:
    image_size: int = 8
    channels: int = 1
    kernel: int = 3


class ToyNet(nn.Module):
    """One convolution, its output scaled by the noise level: ``F(x, c) = conv(x) · (1 + c)``."""

    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = config
        self.conv = nn.Conv2d(config.channels, config.channels, config.kernel, padding=config.kernel // 2)

    def forward(self, x, c_noise):
        return self.conv(x) * (1 + c_noise.reshape(-1, 1, 1, 1))


@pytest.fixture
def toy(monkeypatch):
    """``"toy"`` registered for this test only (the backbone registry is restored afterwards)."""
    registry.names("backbone")  # load the shipped entries before copying
    monkeypatch.setitem(registry._REGISTRY, "backbone", dict(registry._REGISTRY["backbone"]))
    registry.register("backbone", "toy")(Backbone(ToyConfig, ToyNet))  # the one line a new backbone adds
    return "toy"


@pytest.fixture
def data():
    return torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_a_registered_backbone_trains_saves_and_loads(toy, data, tmp_path):
    cfg = TrainConfig(name="toy", steps=2, batch_size=2, checkpoint_every=1, warmup_steps=1, backbone=toy, network=ToyConfig())
    path = train(cfg, data, tmp_path / "run", progress=False)
    config = json.loads(path.with_suffix(".json").read_text())
    assert config["architecture"] == "toy" and config["toy"] == {"image_size": 8, "channels": 1, "kernel": 3} and "unet" not in config
    assert config["training"]["backbone"] == "toy" and config["training"]["toy"] == config["toy"]
    D = load_prior(path)
    assert type(D.net) is ToyNet and (D.image_size, D.channels) == (8, 1)
    # The same network by hand: the trained EMA weights as shipped (float16), in the same preconditioning.
    ema = {k[4:]: v for k, v in load_file(str(tmp_path / "run" / "train_state.safetensors")).items() if k.startswith("ema.")}
    ref = ToyNet(ToyConfig())
    ref.load_state_dict({k: v.half().float() for k, v in ema.items()})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        fresh = ToyNet(ToyConfig()).state_dict()
    assert not torch.equal(fresh["conv.weight"], ema["conv.weight"]), "2 training steps moved the weights"
    x, sigma = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([0.1, 1.0, 10.0])
    with torch.no_grad():
        assert torch.equal(D(x, sigma), EDMDenoiser(ref.eval())(x, sigma))
    # Resuming, and fine-tuning from the written prior, go through the same entry.
    assert train(cfg, data, tmp_path / "run", progress=False) == path
    tuned = TrainConfig(name="toy2", steps=1, batch_size=2, backbone=toy, network=D.net.config)
    init = {k: v.clone() for k, v in D.net.state_dict().items()}
    assert load_prior(train(tuned, data, tmp_path / "tuned", progress=False, init=init)).net.config == ToyConfig()


def test_backbone_errors_are_clear(toy, data, tmp_path):
    with pytest.raises(ValueError, match="unknown backbone 'nope'; choose one of: patch-unet, toy, unet"):
        TrainConfig(backbone="nope")
    with pytest.raises(ValueError, match="network config must be a ToyConfig, got UNetConfig"):
        TrainConfig(backbone=toy, network=TINY).validate()
    with pytest.raises(ValueError, match="image_size must be an integer >= 8, got 4"):
        TrainConfig(backbone=toy, network={"image_size": 4}).validate()
    with pytest.raises(ValueError, match="network= .* or unet=, not both"):
        TrainConfig(backbone=toy, unet=TINY)
    with pytest.raises(TypeError, match="image_size and channels"):
        Backbone(TrainConfig, ToyNet)
    with pytest.raises(TypeError, match="keep its config as net.config"):
        Backbone(ToyConfig, lambda cfg: nn.Conv2d(1, 1, 1)).build(ToyConfig())
    with pytest.raises(ValueError, match="cannot name a backbone"):
        get_backbone("training")
    with pytest.raises(ValueError, match="matches no registered backbone"):
        backbone_of(nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="architecture 'unet' but the network's config is a ToyConfig"):
        save_prior(tmp_path / "x.safetensors", ToyNet(ToyConfig()), {"architecture": "unet"})
    path = save_prior(tmp_path / "p.safetensors", ToyNet(ToyConfig()), {"name": "p"})  # architecture found from net.config
    config = json.loads(path.with_suffix(".json").read_text())
    assert config["architecture"] == "toy"
    path.with_suffix(".json").write_text(json.dumps(dict(config, architecture="nope")))
    with pytest.raises(ValueError, match="architecture 'nope' is not a known backbone"):
        load_prior(path)
    path.with_suffix(".json").write_text(json.dumps(dict(config, toy={"image_size": 8, "depth": 2})))
    with pytest.raises(ValueError, match=r"invalid architecture \(unknown ToyConfig keys \['depth'\]\)"):
        load_prior(path)


def test_the_registry_has_backbones_and_no_prior_kind():
    assert "unet" in registry.names("backbone")
    with pytest.raises(ValueError, match="unknown registry kind 'prior'"):
        registry.names("prior")
    assert TrainConfig().backbone == "unet" and TrainConfig().network == UNetConfig() and TrainConfig(unet=TINY).unet is TINY


def test_a_prior_json_without_architecture_loads_as_a_unet(data, tmp_path):
    path = train(TrainConfig(name="tiny", steps=2, batch_size=2, warmup_steps=1, unet=TINY), data, tmp_path / "run", progress=False)
    config = json.loads(path.with_suffix(".json").read_text())
    assert config["architecture"] == "unet" and config["training"]["unet"] == config["unet"] == json.loads(json.dumps(TINY.to_dict()))
    old = tmp_path / "old.safetensors"
    old.write_bytes(path.read_bytes())
    old.with_suffix(".json").write_text(json.dumps({k: v for k, v in config.items() if k != "architecture"}))
    x, sigma = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2)), torch.tensor([0.5, 5.0])
    with torch.no_grad():
        assert torch.equal(load_prior(old)(x, sigma), load_prior(path)(x, sigma))


def test_a_run_started_before_the_backbone_registry_resumes(data, tmp_path):
    """A train_state.json written before TrainConfig had ``backbone`` (the key absent) is the same UNet run."""
    cfg = TrainConfig(name="tiny", steps=4, batch_size=2, checkpoint_every=2, warmup_steps=1, unet=TINY)
    assert train(cfg, data, tmp_path / "run", progress=False, stop_at=2) is None
    state = tmp_path / "run" / "train_state.json"
    info = json.loads(state.read_text())
    del info["config"]["backbone"]
    state.write_text(json.dumps(info))
    assert train(cfg, data, tmp_path / "run", progress=False).exists()


@pytest.mark.parametrize("name", sorted(bundled_priors()))
def test_bundled_priors_load_their_weights_exactly(name):
    D = load_prior(name)
    shipped = load_file(str(WEIGHTS_DIR / bundled_priors()[name]["file"]))
    state = D.net.state_dict()
    assert backbone_of(D.net) == "unet" and state.keys() == shipped.keys()
    for k, v in shipped.items():
        assert torch.equal(state[k], v.float()), k


def test_fashion_mnist_prior_outputs_unchanged():
    """Outputs recorded from load_prior before backbones were a registry (float32 sums: the tolerance covers the
    thread count's summation order, ~1e-6 relative; float16 weights or other preconditioning move them by >1e-3)."""
    D = load_prior("fashion-mnist-32")
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        y = D(x, torch.tensor([0.3, 5.0])).double()
    assert y.sum().item() == pytest.approx(-359.4371360039804, rel=1e-5)
    assert y.abs().sum().item() == pytest.approx(1037.8776510811877, rel=1e-5)
    assert y.flatten()[:3].tolist() == pytest.approx([-0.46222925186157227, -0.6671774387359619, -0.7620155811309814], abs=1e-5)


def test_train_cli_fine_tunes_a_prior_of_any_backbone(toy, data, tmp_path, capsys):
    """``priorshift train --init`` takes the backbone and its config from the prior; UNet flags are refused for others."""
    import numpy as np

    from priorshift.cli import main

    base = train(TrainConfig(name="toy", steps=1, batch_size=2, backbone=toy, network=ToyConfig()), data, tmp_path / "base", progress=False)
    np.save(tmp_path / "imgs.npy", data.numpy())
    argv = ["train", "--data", f"npy:{tmp_path / 'imgs.npy'}", "--image-size", "8", "--steps", "1", "--batch-size", "2",
            "--init", str(base), "--no-grid", "--quiet"]
    assert main([*argv, "--widths", "8,16", "--out", str(tmp_path / "bad")]) == 2
    assert "--widths and --no-attention are UNet options; --init" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main([*argv, "--out", str(tmp_path / "tuned")]) == 0
    tuned = load_prior(tmp_path / "tuned")
    assert type(tuned.net) is ToyNet and tuned.config["architecture"] == "toy" and tuned.config["init"]["prior"] == str(base)
