"""Training a prior with the EDM loss (Karras et al. 2022, Eq. 2 and Table 1), resumable after a kill.

Per step: draw ``ln σ ~ N(P_mean, P_std²)``, noise the batch, and minimise
``λ(σ) ‖D(x0 + σ n, σ) - x0‖²`` with ``λ(σ) = (σ² + σ_d²) / (σ σ_d)²`` (unit loss weight at every σ).
Adam with warm-up and cosine decay, an EMA of the weights (the EMA is what ships). Batches and noise
are drawn from generators seeded by ``(seed, step)``, so a resumed run continues exactly where the
killed one stopped. The training state is checkpointed atomically every ``checkpoint_every`` steps.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import time
from dataclasses import InitVar, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from priorshift.diffusion.backbones import get_backbone
from priorshift.diffusion.checkpoint import save_prior
from priorshift.diffusion.denoisers import EDMDenoiser
from priorshift.io import atomic_write, atomic_write_json

__all__ = ["TrainConfig", "edm_loss", "train", "check_run_dir", "trained_steps"]


@dataclass
class TrainConfig:
    """Everything that defines a training run (written into the checkpoint's JSON).

    The network is ``backbone`` (a name registered under the kind ``"backbone"``, see
    :mod:`priorshift.diffusion.backbones`) built from ``network``, its config (that backbone's dataclass, or its
    dict form; ``None``: the backbone's defaults). ``unet=UNetConfig(...)`` is still accepted for the UNet, and
    ``cfg.unet`` reads its config.
    """

    name: str = "prior"
    steps: int = 10_000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 200
    final_lr_fraction: float = 0.05  # cosine decay from lr to lr · this
    ema_decay: float = 0.999
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_data: float = 0.5
    seed: int = 0
    checkpoint_every: int = 250
    grad_clip: float = 1.0
    backbone: str = "unet"  # priorshift.registry.names("backbone")
    network: Any = None  # the backbone's config; None: its defaults
    unet: InitVar[Any] = None  # former name of `network` for the UNet backbone

    def __post_init__(self, unet) -> None:
        if unet is not None:
            if self.network is not None or self.backbone != "unet":
                raise ValueError("give the network config once: network= (with backbone=) or unet=, not both")
            self.network = unet
        spec = get_backbone(self.backbone)
        if self.network is None:
            self.network = spec.config()
        elif isinstance(self.network, dict):
            self.network = spec.from_dict(self.network)

    def validate(self) -> "TrainConfig":
        """Raise a ``ValueError`` naming the first bad setting (called by :func:`train` before anything is written)."""
        def integer(name, v, lo):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")

        integer("steps", self.steps, 1)
        integer("batch_size", self.batch_size, 1)
        integer("checkpoint_every", self.checkpoint_every, 1)
        integer("warmup_steps", self.warmup_steps, 0)
        for name in ("lr", "sigma_data", "p_std", "grad_clip"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if not 0 <= self.final_lr_fraction <= 1:
            raise ValueError(f"final_lr_fraction must be in [0, 1], got {self.final_lr_fraction!r}")
        get_backbone(self.backbone).validate(self.network)
        return self


def _unet(self):
    if self.backbone != "unet":
        raise AttributeError(f"a {self.backbone!r} TrainConfig has no UNet config; its network config is .network")
    return self.network


# Read access under the UNet's former field name (the generated __init__ keeps its own default for `unet=`).
TrainConfig.unet = property(_unet, doc="The UNet backbone's config (``network``) under its former name.")


def edm_loss(denoiser: EDMDenoiser, x0: Tensor, generator: torch.Generator, p_mean: float, p_std: float, mask: Tensor | None = None,
             *, cond: Tensor | None = None, noised: Tensor | None = None) -> Tensor:
    """EDM loss ``E λ(σ) ‖D(x0 + σ n, σ) − x0‖²`` (mean over pixels and batch).

    ``mask`` (optional, broadcastable to x0, 1 = observed): the loss is restricted to observed pixels —
    training from measurements only, as in Shoushtari et al.'s prior alignment. ``cond``: extra network inputs
    (a patch network's coordinates); ``noised`` (broadcastable to x0): only these pixels get noise, the others
    (a patch's padding) are known exactly.
    """
    b = x0.shape[0]
    sigma = torch.exp(p_mean + p_std * torch.randn(b, generator=generator, device=x0.device, dtype=x0.dtype))
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    if noised is not None:
        noise = noise * noised
    s = sigma.reshape(-1, 1, 1, 1)
    weight = (s**2 + denoiser.sigma_data**2) / (s * denoiser.sigma_data) ** 2
    err = (denoiser(x0 + s * noise, sigma, **({} if cond is None else {"cond": cond})) - x0) ** 2
    if mask is not None:
        return (weight * err * mask).sum() / (mask.expand_as(err).sum().clamp_min(1))
    return (weight * err).mean()


def _lr(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.final_lr_fraction + (1 - cfg.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _save_state(out: Path, step: int, net, ema, opt, elapsed: float, cfg: TrainConfig, meta: dict, loss_ema: float | None) -> None:
    out.mkdir(parents=True, exist_ok=True)  # created at the first checkpoint: a run that fails earlier leaves nothing
    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    names = dict(net.named_parameters())
    for k, p in names.items():
        st = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in st:
                tensors[f"adam.{key}.{k}"] = st[key].detach().cpu().contiguous()
    atomic_write(out / "train_state.safetensors", lambda tmp: save_file(tensors, tmp))
    atomic_write_json(out / "train_state.json", {"step": step, "elapsed_s": elapsed, "config": _cfg_dict(cfg), "loss_ema": loss_ema, **meta})


def _read_state_info(out: Path) -> dict:
    try:
        return json.loads((out / "train_state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{out / 'train_state.json'} cannot be read ({e}); delete the run directory {out} to start over") from None


# Settings a resumed run may change: the length of the run (the bundled priors were resumed with a shortened
# schedule, see weights/manifest.json) and how often it checkpoints. Anything else would mix two runs.
_RESUMABLE_CHANGES = {"steps", "checkpoint_every"}


def _check_resume(out: Path, info: dict, cfg: TrainConfig, meta: dict) -> None:
    """Refuse to resume a run directory whose run differs from this one in anything but ``_RESUMABLE_CHANGES``."""
    old, new = dict(info.get("config", {})), json.loads(json.dumps(_cfg_dict(cfg)))  # as JSON stores it (tuples → lists)
    old.setdefault("backbone", "unet")  # runs started before the backbone registry trained UNets
    changed = sorted(k for k in set(old) | set(new) if k not in _RESUMABLE_CHANGES and old.get(k) != new.get(k))
    old_data, new_data = (info.get("dataset") or {}).get("sha256_16"), (meta.get("dataset") or {}).get("sha256_16")
    if old_data and new_data and old_data != new_data:
        changed.append("training data")
    if changed:
        detail = ", ".join(f"{k} {old.get(k)!r} → {new.get(k)!r}" if k in old or k in new else k for k in changed)
        raise ValueError(f"{out} holds another training run (differs in {detail}); resuming would mix the two runs — "
                         "choose another --out, or delete that directory to start over")
    step = int(info.get("step", 0))
    if step > cfg.steps:
        raise ValueError(f"{out} holds a run already at step {step}, past the {cfg.steps} steps asked for; ask for >= {step} steps or choose another --out")


def check_run_dir(out: str | Path, cfg: TrainConfig, meta: dict | None = None) -> dict | None:
    """Check that ``out`` can hold this run: a new or empty directory, or one holding the same run to resume
    (see :func:`train`). Returns the saved state's info when there is one to resume, else ``None``. Writes
    nothing; ``meta`` without a dataset digest skips the data comparison (the CLI checks before loading data)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is an existing file; give a run directory")
    if (out / "train_state.json").exists():
        info = _read_state_info(out)
        _check_resume(out, info, cfg, dict(meta or {}))
        return info
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty and holds no training run (no train_state.json); choose a new or empty run directory")
    return None


def trained_steps(out: str | Path) -> int | None:
    """The step the run directory ``out`` has checkpointed (``None``: no run there)."""
    path = Path(out) / "train_state.json"
    return int(_read_state_info(Path(out)).get("step", 0)) if path.exists() else None


def _load_state(out: Path, net, ema, opt) -> tuple[int, float]:
    info = _read_state_info(out)
    try:
        tensors = load_file(str(out / "train_state.safetensors"))
    except Exception as e:  # safetensors raises its own error type and OSError
        raise ValueError(f"{out / 'train_state.safetensors'} cannot be read ({e}); delete the run directory {out} to start over") from None
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"{out / 'train_state.safetensors'}: tensor {bad[0]!r} holds NaN/Inf; the checkpoint is damaged — "
                         f"delete the run directory {out} to start over")
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    step = int(info["step"])
    for k, p in net.named_parameters():
        if f"adam.exp_avg.{k}" in tensors:
            opt.state[p] = {
                "step": torch.tensor(float(step)),
                "exp_avg": tensors[f"adam.exp_avg.{k}"].clone(),
                "exp_avg_sq": tensors[f"adam.exp_avg_sq.{k}"].clone(),
            }
    return step, float(info.get("elapsed_s", 0.0))


def _check_finite_weights(net, step: int, cfg: TrainConfig, fp16: bool = False) -> None:
    """Refuse to checkpoint or ship weights that are NaN/Inf (or, for the float16 prior, beyond its range)."""
    limit = torch.finfo(torch.float16).max if fp16 else float("inf")
    for name, p in net.state_dict().items():
        if p.is_floating_point() and not bool((p.abs() < limit).all()):
            raise ValueError(f"training diverged: weight {name!r} is {'beyond float16 range or ' if fp16 else ''}NaN/Inf at step {step} "
                             f"(lr {cfg.lr:g}); nothing was saved for this step — lower the learning rate and start a new run")


def _cfg_dict(cfg: TrainConfig) -> dict:
    """The run's settings as JSON stores them; the network's config under the backbone's name (``"unet": {...}``)."""
    d = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name != "network"}
    d[cfg.backbone] = get_backbone(cfg.backbone).to_dict(cfg.network)
    return d


def train(
    cfg: TrainConfig, data: Tensor, out: str | Path, *, meta: dict | None = None, progress: bool = True, stop_at: int | None = None,
    init: dict | None = None, mask: Tensor | None = None,
) -> Path | None:
    """Train on ``data`` ((N, C, H, W) in [-1, 1]) into directory ``out``; resume if a state is there.

    ``data`` may also be a stream: a function ``data(step, batch_size) -> (batch_size, C, H, W)`` giving each
    step's batch, a fixed function of ``step`` (procedural data rendered on the fly, never the same image twice;
    resuming continues it). Its first batch is validated like a fixed set.

    Returns the path of the written prior ``out/NAME.safetensors`` (EMA weights + JSON config).
    ``meta`` (dataset description, command line, ...) is stored in the config. ``stop_at``: checkpoint and
    return ``None`` after that step, as if killed there (for tests and time-boxed sessions).
    ``init``: a network state dict to start from instead of the seeded fresh network (fine-tuning); ``mask``:
    per-image loss masks (N, 1 or C, H, W), 1 = observed, restricting the EDM loss to observed pixels
    (training from inpainting measurements; both used by :mod:`priorshift.adapt`).

    Everything is validated before anything is written (the config, the data: finite, in [-1, 1], the
    architecture's shape; the run directory), and ``out`` is created at the first checkpoint, so a run that
    fails early leaves nothing behind. A run directory is resumed only when it holds the same run (same
    config, same data digest in ``meta["dataset"]["sha256_16"]``; ``steps`` may grow); a finished run is not
    retrained or rewritten. A non-finite loss stops the run with an error before the step is applied.
    """
    out = Path(out)
    meta = dict(meta or {})
    cfg.validate()
    c, size = cfg.network.channels, cfg.network.image_size
    stream = callable(data)
    if stream:  # validate the stream by its first batch, as a fixed set is validated whole
        if mask is not None:
            raise ValueError("a loss mask needs a fixed training set (one mask per image), not a stream")
        data, draw = data(0, cfg.batch_size), data
    if data.ndim != 4 or tuple(data.shape[1:]) != (c, size, size):
        raise ValueError(f"training data must be (N, {c}, {size}, {size}); got {tuple(data.shape)}")
    if data.shape[0] < 1:
        raise ValueError("training data holds 0 images")
    if mask is not None and (mask.ndim != 4 or mask.shape[0] != data.shape[0] or mask.shape[1] not in (1, data.shape[1]) or mask.shape[-2:] != data.shape[-2:]):
        raise ValueError(f"mask must be (N, 1 or C, H, W) aligned with the data {tuple(data.shape)}; got {tuple(mask.shape)}")
    if not bool(torch.isfinite(data).all()):
        raise ValueError(f"training data contains {int((~torch.isfinite(data)).sum())} NaN/Inf value(s); clean it first")
    lo, hi = float(data.min()), float(data.max())
    if lo < -1.0001 or hi > 1.0001:
        raise ValueError(f"training data spans [{lo:.4g}, {hi:.4g}]: images must be in [-1, 1] (for [0, 255] data: x / 127.5 - 1)")
    if stream:
        data = draw
    resume = check_run_dir(out, cfg, meta)
    prior_path = out / f"{cfg.name}.safetensors"
    if resume is not None and int(resume.get("step", 0)) == cfg.steps and prior_path.exists() and prior_path.with_suffix(".json").exists():
        print(f"priorshift train: {out} is already trained ({cfg.steps}/{cfg.steps} steps); nothing to do")
        return prior_path
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
        torch.manual_seed(cfg.seed)
        net = get_backbone(cfg.backbone).build(cfg.network)
    if init is not None:
        net.load_state_dict(init)
    ema = copy.deepcopy(net).requires_grad_(False)
    denoiser = EDMDenoiser(net, sigma_data=cfg.sigma_data)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    step, elapsed = 0, 0.0
    if resume is not None:
        step, elapsed = _load_state(out, net, ema, opt)
        print(f"priorshift train: resuming {out} from step {step}/{cfg.steps}")
    backbone = get_backbone(cfg.backbone)
    if mask is not None and backbone.training_batch is not None:
        raise ValueError(f"a loss mask covers whole images; the {cfg.backbone!r} backbone trains on its own batches (crops) — train it without a mask")
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc=f"train {cfg.name}", unit="step", dynamic_ncols=True)
    loss_avg = None if resume is None else resume.get("loss_ema")
    rate_avg = None
    t_last = time.perf_counter()
    while step < cfg.steps:
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        if stream:
            images, loss_mask = data(step, cfg.batch_size).float(), None
        else:
            idx = torch.randint(0, data.shape[0], (cfg.batch_size,), generator=gen)
            images, loss_mask = data[idx].float(), None if mask is None else mask[idx].float()
        x0, cond, inside = backbone.batch(cfg.network, images, gen)
        if inside is not None:
            loss_mask = inside if loss_mask is None else loss_mask * inside
        for g in opt.param_groups:
            g["lr"] = _lr(cfg, step)
        loss = edm_loss(denoiser, x0, gen, cfg.p_mean, cfg.p_std, mask=loss_mask, cond=cond, noised=inside)
        if not bool(torch.isfinite(loss)):
            bar.close()
            raise ValueError(f"the training loss is {loss.item()} at step {step + 1}: the run diverged (lr {cfg.lr:g} too high?); "
                             f"it was not applied — the last checkpoint in {out} (if any) is intact; lower the learning rate and start a new run")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1 - decay)
            for be, b in zip(ema.buffers(), net.buffers()):
                be.copy_(b)
        step += 1
        now = time.perf_counter()
        step_time = now - t_last
        elapsed += step_time
        t_last = now
        loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
        rate = cfg.batch_size / max(step_time, 1e-9)
        rate_avg = rate if rate_avg is None else 0.9 * rate_avg + 0.1 * rate
        bar.update(1)
        bar.set_postfix(loss=f"{loss_avg:.4f}", img_s=f"{rate_avg:.0f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or step == stop_at:
            _check_finite_weights(net, step, cfg)
            _save_state(out, step, net, ema, opt, elapsed, cfg, meta, loss_avg)
        if step == stop_at:
            bar.close()
            return None
    bar.close()
    _check_finite_weights(ema, step, cfg, fp16=True)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "name": cfg.name,
        "architecture": cfg.backbone,
        "preconditioning": {"type": "edm", "sigma_data": cfg.sigma_data, "sigma_min": 0.002, "sigma_max": 80.0},
        "data_range": [-1.0, 1.0],
        "training": {
            **_cfg_dict(cfg),
            "wall_time_s": round(elapsed, 1),
            "images_per_s": round(cfg.steps * cfg.batch_size / max(elapsed, 1e-9), 1) if elapsed else None,
            "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
            "final_loss_ema": loss_avg,
        },
        **meta,
    }
    return save_prior(out / f"{cfg.name}.safetensors", ema, config)
