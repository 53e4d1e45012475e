"""Prior checkpoints: safetensors weights + a JSON config, written atomically, never pickles.

A prior ``NAME`` is two files side by side: ``NAME.safetensors`` (the EMA network weights) and
``NAME.json`` (architecture, preconditioning, data range, how it was trained). The network is the backbone the JSON's
``"architecture"`` names (:mod:`priorshift.diffusion.backbones`; ``"unet"`` when absent, as in priors written before
there was a choice), built from the config stored under that name. Bundled priors live in ``priorshift/weights/`` and
are listed with their training command in ``weights/manifest.json`` (``priorshift priors``).

Integrity, checked by :func:`load_prior` before the prior is handed out, each failure a ``ValueError`` naming the
file, in this order: the SHA-256 of the ``.safetensors`` file against the manifest (bundled names) and against the
``weights_sha256`` its JSON records (written by :func:`save_prior`; older checkpoints without it skip this); the
safetensors header; the architecture — a known backbone, its image size at most :data:`MAX_IMAGE_SIZE`, its
parameter count (the network built on the ``meta`` device, which allocates nothing) equal to the weights file's,
then the tensors' shapes; the **prior digest** (:func:`prior_digest`: weights *and* config, everything that changes
the prior's behaviour) against the ``prior_sha256`` the manifest and the JSON record — so an edited JSON
(``sigma_data``, ``image_size``) is refused, not loaded as another prior under the same name; every tensor
finite; and one forward pass of the network on a fixed input giving a finite output — so weights damaged behind an
intact header are reported as damaged weights, not later as NaN "in the input".

The digest rule, for whoever ships a prior: :func:`save_prior` writes ``prior_sha256`` into the JSON, and
``scripts/bundle_prior.py`` records it in ``weights/manifest.json`` (``--digests`` re-records it for every bundled
prior whose weights still match the manifest's ``sha256``). A JSON edited on purpose is re-sealed with
:func:`seal_prior`.
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

__all__ = ["save_prior", "load_prior", "resolve_prior_path", "bundled_priors", "prior_digest", "seal_prior", "WEIGHTS_DIR", "FORMAT",
           "DIGEST_KEY", "MAX_IMAGE_SIZE"]

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
FORMAT = "priorshift-prior/1"
_PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin"}
DIGEST_KEY = "prior_sha256"  # the JSON key (and manifest key) of the prior digest
MAX_IMAGE_SIZE = 1024  # the largest image side a prior may declare (load_prior runs the network once at that size)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def prior_digest(config: dict, weights_sha256: str) -> str:
    """The SHA-256 that identifies a prior: of its config (every key but ``prior_sha256`` itself, as canonical JSON)
    and of its weights file's SHA-256 — any change to either (weights, preconditioning, architecture, data range)
    changes it (a config without ``architecture`` is read as a UNet, as :func:`load_prior` does). Recorded by
    :func:`save_prior` in the JSON and by ``scripts/bundle_prior.py`` in the manifest."""
    body = {"architecture": "unet", **{k: v for k, v in config.items() if k != DIGEST_KEY}}  # absent: a UNet, as load_prior reads it
    text = json.dumps({"config": body, "weights_sha256": weights_sha256}, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seal_prior(path: str | Path) -> str:
    """Re-record the digest of the prior at ``path`` (``.safetensors`` or ``.json``) in its JSON after a deliberate
    edit of the JSON, and return it. The prior must then load (it is checked)."""
    path = Path(path).with_suffix(".safetensors")
    config_path = path.with_suffix(".json")
    config = json.loads(config_path.read_text())
    digest = prior_digest(config, sha256(path))
    atomic_write_json(config_path, {**{k: v for k, v in config.items() if k != DIGEST_KEY}, DIGEST_KEY: digest})
    load_prior(path)
    return digest


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
    config = {k: v for k, v in config.items() if k != DIGEST_KEY}  # a loaded prior's config carries the old one
    meta = dict(config, format=FORMAT, architecture=arch, **{arch: backbone.to_dict(net.config)},
                weights_dtype=str(dtype).replace("torch.", ""), weights_sha256=sha256(path))
    meta = json.loads(json.dumps(meta))  # the digest is of the JSON as it will be read back (tuples → lists)
    meta[DIGEST_KEY] = prior_digest(meta, meta["weights_sha256"])
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
    eval-mode :class:`EDMDenoiser` taking ``(B, C, H, W)`` float tensors in [-1, 1] and ``sigma`` of shape (B,).
    ``prior.config["prior_sha256"]`` is its digest (:func:`prior_digest`). ``device``: cpu, cuda, cuda:N (checked)."""
    from priorshift._checks import check_device

    device = check_device(device, "device")
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
    entry = _manifest_entry(name_or_path, path)
    weights_sha = _verify_checksum(path, config, config_path, entry.get("sha256"))
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
        meta = _meta_network(net_config, backbone)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{config_path}: invalid architecture ({e}); the config is corrupt") from None
    want, have = sum(t.numel() for t in meta.state_dict().values()), sum(t.numel() for t in state.values())
    if want != have:  # checked on the meta device: an edited architecture allocates nothing
        raise ValueError(f"{path}: weights do not match the architecture in {config_path.name}: it describes a network of {want:,} "
                         f"parameters, the file holds {have:,}")
    net = backbone.build(net_config)
    try:
        net.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not match the architecture in {config_path.name}: {str(e).splitlines()[0]}") from None
    net.eval().requires_grad_(False)
    # The digest after the structural checks (they say more precisely what is wrong), before the network is run.
    config[DIGEST_KEY] = _verify_digest(config, config_path, weights_sha, entry.get(DIGEST_KEY))
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


def _manifest_entry(name_or_path, path: Path) -> dict:
    """The manifest's entry of a bundled prior, loaded by name or by its path in ``weights/``; ``{}`` otherwise."""
    bundled = bundled_priors()
    if str(name_or_path) in bundled:
        return bundled[str(name_or_path)]
    if path.resolve().parent == WEIGHTS_DIR.resolve():
        return next((e for e in bundled.values() if e.get("file") == path.name), {})
    return {}


def _verify_digest(config: dict, config_path: Path, weights_sha: str, manifest_digest: str | None) -> str:
    """The prior's digest, checked against the manifest's and the JSON's ``prior_sha256`` where recorded."""
    digest = prior_digest(config, weights_sha)
    for expected, where in ((manifest_digest, "weights/manifest.json"), (config.get(DIGEST_KEY), config_path.name)):
        if expected and expected != digest:
            raise ValueError(f"{config_path}: the prior's digest {digest[:12]}… (weights and config) differs from the {expected[:12]}… "
                             f"recorded in {where}: the config or the weights were changed after the prior was written; restore them "
                             "(a deliberate edit of the JSON: re-seal it with priorshift.diffusion.checkpoint.seal_prior)")
    return digest


def _meta_network(net_config, backbone) -> nn.Module:
    """The network built on the ``meta`` device (shapes only, nothing allocated), after checking that its image size
    is at most :data:`MAX_IMAGE_SIZE` and its channels at most 64 (the one forward-pass check runs at that size)."""
    size, channels = int(net_config.image_size), int(net_config.channels)
    if not (1 <= size <= MAX_IMAGE_SIZE and 1 <= channels <= 64):
        raise ValueError(f"image_size {size} / channels {channels} out of bounds (image_size 1..{MAX_IMAGE_SIZE}, channels 1..64)")
    with torch.device("meta"):
        return backbone.build(net_config)


def _verify_checksum(path: Path, config: dict, config_path: Path, manifest_sha: str | None) -> str:
    """The file's SHA-256, checked against the manifest's (bundled priors) and the config's ``weights_sha256``."""
    recorded = [(manifest_sha, "weights/manifest.json"), (config.get("weights_sha256"), config_path.name)]
    recorded = [(h, where) for h, where in recorded if h]
    actual = sha256(path)
    for expected, where in recorded:
        if actual != expected:
            fix = "reinstall priorshift" if path.parent == WEIGHTS_DIR else f"restore {path.name} (or retrain it)"
            raise ValueError(f"{path}: SHA-256 {actual[:12]}… differs from the {expected[:12]}… recorded in {where}: the weights "
                             f"file is corrupt or truncated, or not the one its config describes; {fix}")
    return actual


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

