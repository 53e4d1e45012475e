"""Training a prior with the EDM loss (Karras et al. 2022, Eq. 2 and Table 1), resumable after a kill.

Per step: draw ``ln σ ~ N(P_mean, P_std²)``, noise the batch, and minimise
``λ(σ) ‖D(x0 + σ n, σ) - x0‖²`` with ``λ(σ) = (σ² + σ_d²) / (σ σ_d)²`` (unit loss weight at every σ).
Adam with warm-up and cosine decay, an EMA of the weights (the EMA is what ships). Batches and noise
are drawn from generators seeded by ``(seed, step)``, so a resumed run continues exactly where the
killed one stopped. The training state is checkpointed atomically every ``checkpoint_every`` steps.
"""

from __future__ import annotations

import copy
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from priorshift.diffusion.checkpoint import save_prior
from priorshift.diffusion.denoisers import EDMDenoiser
from priorshift.diffusion.unet import UNet, UNetConfig
from priorshift.io import atomic_write, atomic_write_json

__all__ = ["TrainConfig", "edm_loss", "train"]


@dataclass
class TrainConfig:
    """Everything that defines a training run (written into the checkpoint's JSON)."""

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
    unet: UNetConfig = field(default_factory=UNetConfig)


def edm_loss(denoiser: EDMDenoiser, x0: Tensor, generator: torch.Generator, p_mean: float, p_std: float, mask: Tensor | None = None) -> Tensor:
    """EDM loss ``E λ(σ) ‖D(x0 + σ n, σ) − x0‖²`` (mean over pixels and batch).

    ``mask`` (optional, broadcastable to x0, 1 = observed): the loss is restricted to observed pixels —
    training from measurements only, as in Shoushtari et al.'s prior alignment.
    """
    b = x0.shape[0]
    sigma = torch.exp(p_mean + p_std * torch.randn(b, generator=generator, device=x0.device, dtype=x0.dtype))
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    s = sigma.reshape(-1, 1, 1, 1)
    weight = (s**2 + denoiser.sigma_data**2) / (s * denoiser.sigma_data) ** 2
    err = (denoiser(x0 + s * noise, sigma) - x0) ** 2
    if mask is not None:
        return (weight * err * mask).sum() / (mask.expand_as(err).sum().clamp_min(1))
    return (weight * err).mean()


def _lr(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.final_lr_fraction + (1 - cfg.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _save_state(out: Path, step: int, net, ema, opt, elapsed: float, cfg: TrainConfig, meta: dict) -> None:
    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    names = dict(net.named_parameters())
    for k, p in names.items():
        st = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in st:
                tensors[f"adam.{key}.{k}"] = st[key].detach().cpu().contiguous()
    atomic_write(out / "train_state.safetensors", lambda tmp: save_file(tensors, tmp))
    atomic_write_json(out / "train_state.json", {"step": step, "elapsed_s": elapsed, "config": _cfg_dict(cfg), **meta})


def _load_state(out: Path, net, ema, opt) -> tuple[int, float]:
    import json

    info = json.loads((out / "train_state.json").read_text())
    tensors = load_file(str(out / "train_state.safetensors"))
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


def _cfg_dict(cfg: TrainConfig) -> dict:
    d = asdict(cfg)
    d["unet"] = cfg.unet.to_dict()
    return d


def train(
    cfg: TrainConfig, data: Tensor, out: str | Path, *, meta: dict | None = None, progress: bool = True, stop_at: int | None = None
) -> Path | None:
    """Train on ``data`` ((N, C, H, W) in [-1, 1]) into directory ``out``; resume if a state is there.

    Returns the path of the written prior ``out/NAME.safetensors`` (EMA weights + JSON config).
    ``meta`` (dataset description, command line, ...) is stored in the config. ``stop_at``: checkpoint and
    return ``None`` after that step, as if killed there (for tests and time-boxed sessions).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    if data.ndim != 4 or data.shape[1] != cfg.unet.channels or data.shape[-1] != cfg.unet.image_size:
        raise ValueError(f"training data must be (N, {cfg.unet.channels}, {cfg.unet.image_size}, {cfg.unet.image_size}); got {tuple(data.shape)}")
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
        torch.manual_seed(cfg.seed)
        net = UNet(cfg.unet)
    ema = copy.deepcopy(net).requires_grad_(False)
    denoiser = EDMDenoiser(net, sigma_data=cfg.sigma_data)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    step, elapsed = 0, 0.0
    if (out / "train_state.json").exists():
        step, elapsed = _load_state(out, net, ema, opt)
        print(f"priorshift train: resuming {out} from step {step}/{cfg.steps}")
    n = data.shape[0]
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc=f"train {cfg.name}", unit="step", dynamic_ncols=True)
    loss_avg = rate_avg = None
    t_last = time.perf_counter()
    while step < cfg.steps:
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        idx = torch.randint(0, n, (cfg.batch_size,), generator=gen)
        x0 = data[idx].float()
        for g in opt.param_groups:
            g["lr"] = _lr(cfg, step)
        loss = edm_loss(denoiser, x0, gen, cfg.p_mean, cfg.p_std)
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
            _save_state(out, step, net, ema, opt, elapsed, cfg, meta)
        if step == stop_at:
            bar.close()
            return None
    bar.close()
    config = {
        "name": cfg.name,
        "architecture": "unet",
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
