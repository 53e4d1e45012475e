"""Prior checkpoints: safetensors weights + a JSON config, written atomically, never pickles.

A prior ``NAME`` is two files side by side: ``NAME.safetensors`` (the EMA network weights) and
``NAME.json`` (architecture, preconditioning, data range, how it was trained). The network is the backbone the JSON's
``"architecture"`` names (:mod:`priorshift.diffusion.backbones`; ``"unet"`` when absent, as in priors written before
there was a choice), built from the config stored under that name. Bundled priors live in ``priorshift/weights/`` and
are listed with their training command in ``weights/manifest.json`` (``priorshift priors``).

Integrity, checked by :func:`load_prior` before the prior is handed out, each failure a ``ValueError`` naming the
weights file: the SHA-256 of the ``.safetensors`` file against the manifest (bundled names) and against the
``weights_sha256`` its JSON records (written by :func:`save_prior`; older checkpoints without it skip this);
the safetensors header; the tensors' shapes against the architecture; every tensor finite; and one forward
pass of the network on a fixed input giving a finite output — so weights damaged behind an intact header are
reported as damaged weights, not later as NaN "in the input".
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from torch import nn

from priorshift.diffusion.backbones import backbone_of, get_backbone
from priorshift.diffusion.denoisers import EDMDenoiser
from priorshift.io import atomic_write, atomic_write_json  # also still imported from here by callers not yet moved

__all__ = ["save_prior", "load_prior", "resolve_prior_path", "bundled_priors", "WEIGHTS_DIR", "FORMAT"]

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
FORMAT = "priorshift-prior/1"
_PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin"}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_prior(path: str | Path, net: nn.Module, config: dict, *, half: bool = True) -> Path:
    """Write ``path`` (``.safetensors``) and its ``.json`` config. ``net``: a registered backbone's network, the
    one ``config["architecture"]`` names (when absent: found from ``net.config``). ``half`` stores weights as
    float16 (loaded back as float32; the rounding changes denoiser outputs by ~1e-3 relative at most)."""
    path = Path(path).with_suffix(".safetensors")
    arch = config.get("architecture") or backbone_of(net)
    backbone = get_backbone(arch)
    if type(net.config) is not backbone.config:
        raise ValueError(f"the config says architecture {arch!r} but the network's config is a {type(net.config).__name__}, "
                         f"not a {backbone.config.__name__}")
    dtype = torch.float16 if half else torch.float32
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in net.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT}))
    meta = dict(config, format=FORMAT, architecture=arch, **{arch: backbone.to_dict(net.config)},
                weights_dtype=str(dtype).replace("torch.", ""), weights_sha256=sha256(path))
    atomic_write_json(path.with_suffix(".json"), meta)
    return path


def bundled_priors() -> dict[str, dict]:
    """The manifest of the priors shipped in ``priorshift/weights`` (name → how it was trained)."""
    manifest = WEIGHTS_DIR / "manifest.json"
    if not manifest.exists():
        return {}
    return json.loads(manifest.read_text())


def resolve_prior_path(name_or_path: str | Path) -> Path:
    s = str(name_or_path)
    bundled = bundled_priors()
    if s in bundled:
        return WEIGHTS_DIR / bundled[s]["file"]
    path = Path(s)
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise ValueError(
            f"{path.name}: pickle-based checkpoints ({path.suffix}) are not loaded — they can execute code. "
            "Convert the weights to .safetensors (safetensors.torch.save_file) with a priorshift JSON config beside them."
        )
    if path.is_dir():
        found = sorted(path.glob("*.safetensors"))
        found = [p for p in found if p.with_suffix(".json").exists() and not p.name.startswith("train_state")]
        if len(found) != 1:
            raise ValueError(f"{path} must hold exactly one prior (NAME.safetensors + NAME.json); found {len(found)}")
        path = found[0]
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if path.suffix != ".safetensors" or not path.exists():
        known = ", ".join(sorted(bundled)) or "(none bundled)"
        raise ValueError(f"no prior {s!r}: not a bundled name ({known}) and not an existing .safetensors file or directory")
    return path


def load_prior(name_or_path: str | Path, device: str | torch.device = "cpu") -> EDMDenoiser:
    """A bundled prior by name (``"phantom-ct-64"``, ``"fashion-mnist-32"``) or a checkpoint path → an
    eval-mode :class:`EDMDenoiser` taking ``(B, C, H, W)`` float tensors in [-1, 1] and ``sigma`` of shape (B,)."""
    path = resolve_prior_path(name_or_path)
    config_path = path.with_suffix(".json")
    if not config_path.exists():
        raise ValueError(f"{path.name} has no config {config_path.name} beside it; a priorshift prior is NAME.safetensors + NAME.json")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_path} is not valid JSON ({e}); the checkpoint is corrupt") from None
    if config.get("format") != FORMAT:
        raise ValueError(f"{config_path} is not a priorshift prior config (format {config.get('format')!r}, expected {FORMAT!r})")
    _verify_checksum(path, config, config_path, bundled_priors().get(str(name_or_path), {}).get("sha256"))
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} could not be read as safetensors ({e}); the file is corrupt or truncated") from None
    arch = config.get("architecture", "unet")
    try:
        backbone = get_backbone(arch)
    except ValueError as e:
        raise ValueError(f"{config_path}: architecture {arch!r} is not a known backbone ({e}); register it before loading") from None
    try:
        net_config = backbone.from_dict(config[arch])
        net = backbone.build(net_config)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{config_path}: invalid architecture ({e}); the config is corrupt") from None
    try:
        net.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not match the architecture in {config_path.name}: {str(e).splitlines()[0]}") from None
    net.eval().requires_grad_(False)
    _check_weights(path, state, net, net_config.image_size, net_config.channels)
    pre = config.get("preconditioning", {})
    denoiser = backbone.whole_image_denoiser(
        net,
        net_config,
        sigma_data=pre.get("sigma_data", 0.5),
        sigma_min=pre.get("sigma_min", 0.002),
        sigma_max=pre.get("sigma_max", 80.0),
        data_range=config.get("data_range", (-1.0, 1.0)),
    )
    denoiser.config = config
    return denoiser.to(device)


def _verify_checksum(path: Path, config: dict, config_path: Path, manifest_sha: str | None) -> None:
    """The file's SHA-256 against the manifest's (bundled priors) and the config's ``weights_sha256``."""
    recorded = [(manifest_sha, "weights/manifest.json"), (config.get("weights_sha256"), config_path.name)]
    recorded = [(h, where) for h, where in recorded if h]
    if not recorded:
        return
    actual = sha256(path)
    for expected, where in recorded:
        if actual != expected:
            fix = "reinstall priorshift" if path.parent == WEIGHTS_DIR else f"restore {path.name} (or retrain it)"
            raise ValueError(f"{path}: SHA-256 {actual[:12]}… differs from the {expected[:12]}… recorded in {where}: the weights "
                             f"file is corrupt or truncated, or not the one its config describes; {fix}")


def _check_weights(path: Path, state: dict, net: nn.Module, size: int, channels: int) -> None:
    """Every tensor finite, and one forward pass on a fixed input finite: damage behind an intact header
    (overwritten bytes decode as NaN/Inf or as huge values) is caught here, with the file named."""
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{path}: weight tensor {name!r} holds {bad} NaN/Inf value(s): the weights file is damaged "
                             "(or the training that wrote it diverged); restore or retrain it")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, channels, size, size, generator=g)
    c_noise = torch.log(torch.tensor([0.5, 20.0])) / 4  # EDM's c_noise at σ = 0.5 and 20
    with torch.no_grad():
        out = net(x, c_noise)
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"{path}: the network's output on a test input is NaN/Inf although every weight is finite: the "
                         "weights file is damaged (or the training diverged); restore or retrain it")

