"""Helpers shared by the benchmark scripts: best-of-N timing, a hardware line, number formatting, writing the results table,
and the KLIP experiments' tasks, Fashion-MNIST sets and measurement domains."""

from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch.nn import functional as F

from priorshift import load_prior
from priorshift.data import LabeledSet, fashion_mnist, healthy_set, insert_scar, insert_star, lesion_set, star_set
from priorshift.diffusion.backbones import get_backbone
from priorshift.io import atomic_write
from priorshift.operators.spec import operator_from_spec
from priorshift.rng import per_image_rng
from priorshift.tasks import get_task

KLIP_TASKS = ("ct", "fmnist-blur", "fmnist-inpaint")
"""The tasks of the KLIP experiments (benchmarks/klip_experiment.py, dps_step.py)."""

DOMAINS = {  # the measurement domains of the KLIP detection benchmarks (klip_detects, klip_multiscale)
    "identity": "identity:noise=0.02",
    "fmnist-inpaint": "task:fmnist-inpaint",
    "fmnist-blur": "task:fmnist-blur",
    "inpaint50": "inpaint:p=0.5,noise=0.02,seed=0",
}


def best_time(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def hardware(threads: int, device: str = "cpu") -> str:
    return f"{platform.processor() or platform.machine()}, {threads} threads, torch {torch.__version__}, device {device}"


def emit(lines: list[str], out: str | None) -> None:
    """Print the table and, if asked, write it to ``out``."""
    text = "\n".join(lines)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")


def write_results(out: Path, name: str, lines: list[str], data) -> str:
    """Write ``out/name.md`` (the table) and ``out/name.json`` (``data``) atomically, print the table, return it."""
    text = "\n".join(lines) + "\n"
    atomic_write(out / f"{name}.md", lambda tmp: Path(tmp).write_text(text))
    atomic_write(out / f"{name}.json", lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1, default=float)))
    print(text)
    return text


def fmt(v, digits: int = 3) -> str:
    """``v`` with ``digits`` decimals; "—" for None or NaN."""
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def fmnist_sets(n_tune: int, n_eval: int) -> dict[str, LabeledSet]:
    """The Fashion-MNIST sets of the KLIP experiments: ID tuning/evaluation garments, stars (tuning and evaluation)
    and scars (evaluation) inserted into garments, with their ground-truth masks."""
    x = fashion_mnist("test")
    x = x[(x[:, 0] > -0.5).flatten(1).sum(1) >= 120]  # garments large enough to hold an insertion (all sets alike)
    sizes = {"tune_id": n_tune, "tune_ood": n_tune, "eval_id": n_eval, "eval_star": n_eval, "eval_scar": n_eval}
    out, start = {}, 0
    for name, n in sizes.items():
        imgs = x[start : start + n].clone()
        start += n
        garment = imgs[:, 0] > -0.5
        if name in ("tune_ood", "eval_star"):
            imgs, masks = insert_star(imgs, garment, size=3.0, intensity=1.0, seed=[1000 * (name == "eval_star") + i for i in range(n)])
        elif name == "eval_scar":
            imgs, masks = insert_scar(imgs, garment, width=1.0, length=9.0, intensity=1.0, seed=list(range(n)))
        else:
            masks = torch.zeros(n, 32, 32, dtype=torch.bool)
        out[name] = LabeledSet(imgs, masks, torch.ones(n, 32, 32, dtype=torch.bool))
    return out


def task_config(task: str, n_tune: int, n_eval: int):
    """A KLIP experiment task (one of :data:`KLIP_TASKS`): its prior, operator, labelled sets, blocks and figure settings."""
    if task not in KLIP_TASKS:
        raise SystemExit(f"unknown task {task!r}; choose ct, fmnist-blur or fmnist-inpaint")
    defn = get_task(task)
    op = defn.make_operator()
    common = dict(prior=defn.prior, operator=op, base_block=defn.base_block, description=defn.description)
    if task == "ct":
        contrast = defn.extra["lesion_contrast"]
        sets = {
            "tune_id": healthy_set(n_tune, seed=20_001),
            "tune_ood": star_set(n_tune, seed=20_002),
            "eval_id": healthy_set(n_eval, seed=20_003),
            "eval_lesion": lesion_set(n_eval, seed=20_004, contrast=contrast),
            "eval_star": star_set(n_eval, seed=20_005),
        }
        contrasts = (-0.05, -0.1, -0.15, -0.2, -0.3)
        for c in contrasts:
            if c != contrast:
                sets[f"lesion_{c:+.2f}"] = lesion_set(n_eval, seed=20_004, contrast=c)
        return dict(common, sets=sets, blocks=(2, 4, 8, 16, 32), contrasts=contrasts, measurement=lambda y: op.fbp(y, filter="hann"),
                    measurement_title=f"FBP ({op.n_views} views)", main_ood="eval_lesion")
    show, title = ((lambda y: y), "blurred y") if task == "fmnist-blur" else (op.A_pinv, "masked y")  # the blurred image itself; the masked image
    return dict(common, sets=fmnist_sets(n_tune, n_eval), blocks=(2, 4, 8, 16), contrasts=(), measurement=show, measurement_title=title, main_ood="eval_star")


def domain_operator(spec: str):
    """The operator of a :data:`DOMAINS` spec: ``task:NAME`` (that task's operator) or an operator spec on 32×32 images."""
    return get_task(spec[5:]).make_operator() if spec.startswith("task:") else operator_from_spec(spec, 32)


def mse(D, x, sigma, seed, mask=None, batch=128):
    """Mean denoising MSE of ``D`` on images ``x`` at noise ``sigma`` (noise from ``seed``); ``mask``: per-pixel weights."""
    g = torch.Generator().manual_seed(seed)
    errs = []
    for start in range(0, x.shape[0], batch):
        xb = x[start : start + batch]
        xn = xb + sigma * torch.randn(xb.shape, generator=g)
        with torch.no_grad():
            err = (D(xn, torch.full((xb.shape[0],), sigma)) - xb) ** 2
        if mask is not None:
            m = mask[start : start + batch].reshape(err.shape).float()
            errs.append(((err * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)))
        else:
            errs.append(err.flatten(1).mean(1))
    return torch.cat(errs).mean().item()


# -- CT priors and the clean-image lesion references (ct_prior_curve.py, ct_ceiling.py) ------------------------
LOCAL_SIGMAS, BLOCK = (0.05, 0.1, 0.2), 4
SHIPPED_IMAGES = {"phantom-ct-64": 4500 * 48}
"""Images seen by the bundled CT priors whose JSON does not record their training (phantom-ct-64: 4,500 steps × 48)."""


def load_any(spec: str):
    """``(denoiser, images seen, backbone, label)`` of a bundled prior, a checkpoint or a run snapshot directory."""
    path = Path(spec)
    if (path / "train_state.json").exists():
        info = json.loads((path / "train_state.json").read_text())
        cfg = info["config"]
        backbone = get_backbone(cfg.get("backbone", "unet"))
        net_cfg = backbone.from_dict(cfg[cfg.get("backbone", "unet")])
        net = backbone.build(net_cfg)
        state = load_file(str(path / "train_state.safetensors"))
        net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("ema.")})
        net.eval().requires_grad_(False)
        den = backbone.whole_image_denoiser(net, net_cfg, sigma_data=cfg.get("sigma_data", 0.5))
        init = (info.get("init") or {}).get("prior")
        seen = int(info["step"]) * int(cfg["batch_size"]) + SHIPPED_IMAGES.get(init, 0)
        return den, seen, cfg.get("backbone", "unet"), path.name
    den = load_prior(spec)
    training, init = den.config.get("training") or {}, (den.config.get("init") or {}).get("prior")
    seen = SHIPPED_IMAGES.get(spec, training.get("steps", 0) * training.get("batch_size", 0) + SHIPPED_IMAGES.get(init, 0))
    return den, seen, den.config.get("architecture", "unet"), Path(spec).stem


def local_error_maps(den, x: torch.Tensor, seed0: int) -> torch.Tensor:
    """(B, H/BLOCK, W/BLOCK) block means of the per-pixel denoising error averaged over LOCAL_SIGMAS."""
    b = x.shape[0]
    rng = per_image_rng(list(range(seed0, seed0 + b)), b, x.device)
    z = rng.randn((len(LOCAL_SIGMAS), *x.shape[1:]), dtype=x.dtype)  # (B, K, C, H, W)
    err = 0
    with torch.no_grad():
        for k, s in enumerate(LOCAL_SIGMAS):
            err = err + (den(x + s * z[:, k], torch.full((b,), s)) - x).pow(2).mean(1)
    return F.avg_pool2d(err[:, None] / len(LOCAL_SIGMAS), BLOCK)[:, 0]


def liver_contrast(images: torch.Tensor, livers: torch.Tensor) -> torch.Tensor:
    """Reference (given the liver mask): −min over the liver (eroded by 1 px) of the liver-only 3 × 3 mean minus
    the liver-only 11 × 11 mean (means over liver pixels, so organ edges do not enter)."""
    x, m = images[:, :1], livers[:, None].float()

    def liver_mean(k):
        return F.avg_pool2d(x * m, k, 1, k // 2) / F.avg_pool2d(m, k, 1, k // 2).clamp_min(1e-6)

    inner = -F.max_pool2d(-m, 3, 1, 1) > 0  # the liver eroded by one pixel
    local = liver_mean(3) - liver_mean(11)
    return -torch.where(inner, local, torch.full_like(local, float("inf"))).flatten(1).min(1).values
