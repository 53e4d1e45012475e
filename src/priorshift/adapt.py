"""Prior alignment from measurements only (Shoushtari et al., arXiv 2505.11482, §2.3 of research/algorithms.md):
fine-tune a mismatched diffusion prior on a few measured images so that its score moves towards the data's.

**Loss.** The EDM loss (Karras et al. 2022) with the back-projected measurement
(:func:`priorshift.operators.back_project`) in place of the clean image:

* inpainting, ``y = m ⊙ x + e``: ``E λ(σ) ‖(D(m ⊙ y + σ n, σ) − m ⊙ y) ⊙ m‖² / Σ m`` — the loss is restricted
  to the observed pixels (:func:`priorshift.diffusion.training.edm_loss` with ``mask=m``); missing pixels are
  0 in the input (the official code's fill 0.5 in [0, 1]); each measurement keeps its own mask;
* single-coil Cartesian MRI, ``y = M F x + e``: the plain EDM loss on the zero-filled image ``Re(Fᴴ M y)``
  (the paper's recipe; aliasing is learnt as part of the images, which is why the MRI alignment is weaker);
* any other operator (CT, blur, downsampling, denoising): the plain EDM loss on ``A⁺ y`` — its artifacts
  (streaks, ringing, blocks, noise) are learnt as part of the images, as MRI's aliasing is.

The training set (:mod:`priorshift.measured`, re-exported here): :func:`measured_set` back-projects measurements
with the operator that made them; :func:`simulate_measurements` measures clean images with it, each image its own
mask (where the operator has random masks) and noise from its seed.

Targets are clipped to [-1, 1] (noise on bright pixels, Gibbs overshoot of zero-filled images) — training
data must lie there.

**Optimisation.** Adam, a short warm-up then a constant learning rate, an EMA of the weights (what is
evaluated and shipped), gradient clipping — :func:`priorshift.diffusion.training.train` itself, started from the
mismatched prior's weights (``init=``) and run tick by tick (``stop_at=``), so that its resumable, atomic
checkpoints are reused as they are. After every tick (``eval_every`` steps) the EMA is scored on a held-out
split of the measurements (the same masked loss, with fixed noise and σ draws — common random numbers, so
successive ticks differ by the change of the weights only). **Early stopping**: stop after ``patience`` ticks
without a relative improvement of ``min_improvement``, or at ``steps``; the best tick's EMA is the result.
The paper stops on the training loss (patience 3 ticks, 1e-3) and on gradient-norm blow-ups; a held-out
split is the sounder rule with 64–128 images.

**Files** in ``out``: ``NAME.safetensors`` + ``NAME.json`` (the best EMA so far, written atomically at each
improvement; a loadable prior from the first tick on), ``adapt_state.json`` (history and early-stopping
state, atomic), ``train/`` (the training run's checkpoint). A killed run resumes where it stopped and ends
exactly as an uninterrupted one; a finished run is not retrained.

``priorshift adapt`` is this module's command (:mod:`priorshift.cli.adapt`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from priorshift.measured import KINDS, MeasuredSet, measured_set, simulate_measurements

if TYPE_CHECKING:  # torch is imported where it is used: `priorshift --help` stays light
    from torch import Tensor

__all__ = ["AdaptConfig", "AdaptResult", "MeasuredSet", "measured_set", "simulate_measurements", "adapt_prior", "KINDS"]


# -- configuration and result ----------------------------------------------------------------------------
@dataclass
class AdaptConfig:
    """Everything that defines an alignment run (stored in ``adapt_state.json`` and the prior's JSON)."""

    name: str = "aligned"
    steps: int = 2000  # at most; early stopping usually ends sooner
    batch_size: int = 8
    lr: float = 1e-4
    warmup_steps: int = 20
    ema_decay: float = 0.99
    grad_clip: float = 1.0
    p_mean: float = -1.2
    p_std: float = 1.2
    seed: int = 0
    eval_every: int = 50  # steps per tick
    patience: int = 3  # ticks without improvement before stopping
    min_improvement: float = 1e-3  # relative
    val_fraction: float = 0.25  # held-out share of the measurements
    val_draws: int = 8  # noise/σ draws per held-out measurement

    def validate(self) -> "AdaptConfig":
        def integer(name, lo):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")

        for name, lo in (("steps", 1), ("batch_size", 1), ("warmup_steps", 0), ("eval_every", 1), ("patience", 1), ("val_draws", 1)):
            integer(name, lo)
        for name in ("lr", "grad_clip", "p_std"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if not (math.isfinite(self.min_improvement) and self.min_improvement >= 0):
            raise ValueError(f"min_improvement must be a finite number >= 0, got {self.min_improvement!r}")
        if not self.name or "/" in self.name or self.name.startswith("train_state"):
            raise ValueError(f"name must be a plain file name, got {self.name!r}")
        return self


@dataclass(frozen=True)
class AdaptResult:
    """``path``: the aligned prior (``NAME.safetensors``); ``history``: ``[(step, held-out loss), ...]`` from step
    0 (the mismatched prior) on; ``best_step`` / ``best_val_loss``: the tick that was kept; ``stopped``: why."""

    path: Path
    history: list
    best_step: int
    best_val_loss: float
    initial_val_loss: float
    stopped: str
    n_train: int
    n_val: int
    steps_run: int
    extras: dict = field(default_factory=dict)


# -- the run ---------------------------------------------------------------------------------------------
def _backbone_and_config(prior):
    """``(the EDM prior, its backbone's name, its network config)``; a clear error for what cannot be fine-tuned."""
    from priorshift.diffusion.backbones import backbone_of, get_backbone
    from priorshift.diffusion.denoisers import CountingDenoiser, EDMDenoiser

    if isinstance(prior, CountingDenoiser):
        prior = prior.denoiser
    if not isinstance(prior, EDMDenoiser):
        raise ValueError("alignment fine-tunes a whole-image priorshift prior (an EDMDenoiser from load_prior or train; patch priors "
                         "are not supported yet); got " + type(prior).__name__)
    name = backbone_of(prior.net)
    if get_backbone(name).training_batch is not None:
        raise ValueError(f"alignment trains on whole masked images; the {name!r} backbone trains on its own batches — not supported yet")
    if tuple(prior.data_range) != (-1.0, 1.0):
        raise ValueError(f"the prior was trained on data range {prior.data_range}; fine-tuning supports [-1, 1] priors only")
    return prior, name, prior.net.config


def _split(n: int, cfg: AdaptConfig) -> tuple[Tensor, Tensor]:
    import torch

    if n < 2:
        raise ValueError(f"alignment needs at least 2 measured images (a training and a held-out split), got {n}")
    n_val = min(n - 1, max(1, round(cfg.val_fraction * n)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + 0x5EED))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def _val_loss(denoiser, val: MeasuredSet, cfg: AdaptConfig) -> float:
    import torch

    from priorshift.diffusion.training import edm_loss

    total = 0.0
    with torch.no_grad():
        for r in range(cfg.val_draws):
            gen = torch.Generator().manual_seed(cfg.seed * 7919 + 10_007 * (r + 1))  # the same draws at every tick
            total += float(edm_loss(denoiser, val.targets, gen, cfg.p_mean, cfg.p_std, mask=val.masks))
    return total / cfg.val_draws


def _ema_denoiser(run: Path, base, backbone: str, net_cfg):
    from safetensors.torch import load_file

    from priorshift.diffusion.backbones import get_backbone

    tensors = load_file(str(run / "train_state.safetensors"))
    net = get_backbone(backbone).build(net_cfg)
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    net.eval().requires_grad_(False)
    return get_backbone(backbone).whole_image_denoiser(net, net_cfg, sigma_data=base.sigma_data, sigma_min=base.sigma_min,
                                                       sigma_max=base.sigma_max)


def _trained_steps(run: Path) -> int:
    path = run / "train_state.json"
    return int(json.loads(path.read_text()).get("step", 0)) if path.exists() else 0


def adapt_prior(
    prior, data: MeasuredSet, out: str | Path, cfg: AdaptConfig | None = None, *, meta: dict | None = None, progress: bool = False,
    stop_at: int | None = None,
) -> AdaptResult | None:
    """Fine-tune ``prior`` (a whole-image priorshift prior of any registered backbone) on the measured set ``data`` into the directory ``out``.

    Returns an :class:`AdaptResult` (the aligned prior is ``result.path``), or ``None`` when ``stop_at`` (a step)
    was reached first — as if killed there; calling again resumes. ``meta`` (where the measurements and the
    prior came from, the command line) is stored in the prior's JSON. Everything is validated before anything
    is written; ``out`` must be new, empty, or hold this same run.
    """
    from priorshift.diffusion.checkpoint import save_prior
    from priorshift.diffusion.training import TrainConfig, train
    from priorshift.io import atomic_write_json

    cfg = (cfg or AdaptConfig()).validate()
    base, backbone, net_cfg = _backbone_and_config(prior)
    if not isinstance(data, MeasuredSet):
        raise ValueError("data must be a MeasuredSet (see measured_set / simulate_measurements)")
    if tuple(data.targets.shape[1:]) != (base.channels, base.image_size, base.image_size):
        raise ValueError(f"the measurements back-project to {tuple(data.targets.shape[1:])} images but the prior is "
                         f"{base.channels}×{base.image_size}×{base.image_size}")
    train_idx, val_idx = _split(len(data), cfg)
    tr, va = data.subset(train_idx), data.subset(val_idx)
    out = Path(out)
    run = out / "train"
    state_path = out / "adapt_state.json"
    prior_path = out / f"{cfg.name}.safetensors"
    h = hashlib.sha256()
    for v in base.net.state_dict().values():
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    identity = {"config": asdict(cfg), "data_sha256_16": data.digest(), "kind": data.kind, "n": len(data), "prior_sha256_16": h.hexdigest()[:16]}
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is an existing file; give a directory")
    state = None
    if state_path.exists():
        state = json.loads(state_path.read_text())
        if state.get("identity") != json.loads(json.dumps(identity)):
            raise ValueError(f"{out} holds another alignment run (different settings, measurements or starting prior); choose another directory or delete it")
    elif out.is_dir() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty and holds no alignment run (no adapt_state.json); choose a new or empty directory")
    source = dict(getattr(base, "config", None) or {})
    prior_config = {k: v for k, v in source.items() if k not in ("format", source.get("architecture", "unet"), "weights_dtype", "name")}
    tcfg = TrainConfig(
        name=cfg.name, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=cfg.warmup_steps, final_lr_fraction=1.0,
        ema_decay=cfg.ema_decay, p_mean=cfg.p_mean, p_std=cfg.p_std, sigma_data=base.sigma_data, seed=cfg.seed,
        checkpoint_every=cfg.eval_every, grad_clip=cfg.grad_clip, backbone=backbone, network=net_cfg,
    )
    train_meta = {"dataset": {"sha256_16": tr.digest(), "n": len(tr), "kind": data.kind}, "adaptation_of": source.get("name")}

    def write_best(net, step: int, val: float, history) -> None:
        config = {**prior_config, "name": cfg.name, "adapted_from": source.get("name"), **dict(meta or {}),
                  "adaptation": {"kind": data.kind, "n_train": len(tr), "n_val": len(va), "best_step": step, "best_val_loss": val,
                                 "history": history, "config": asdict(cfg), "data_sha256_16": data.digest()}}
        save_prior(prior_path, net, config)

    if state is None:
        v0 = _val_loss(base, va, cfg)
        state = {"identity": identity, "history": [[0, v0]], "best_step": 0, "best_val_loss": v0, "bad_ticks": 0, "step": 0,
                 "finished": False, "stopped": None}
        out.mkdir(parents=True, exist_ok=True)
        write_best(base.net, 0, v0, state["history"])
        atomic_write_json(state_path, state)
    init = {k: v.detach().clone() for k, v in base.net.state_dict().items()}
    while not state["finished"]:
        target = min(state["step"] + cfg.eval_every, cfg.steps)
        if _trained_steps(run) < target:
            sink = contextlib.nullcontext() if progress else contextlib.redirect_stdout(io.StringIO())
            with sink:
                train(tcfg, tr.targets, run, meta=train_meta, progress=progress, stop_at=target, init=init, mask=tr.masks)
        ema = _ema_denoiser(run, base, backbone, net_cfg)
        val = _val_loss(ema, va, cfg)
        state["history"].append([target, val])
        if val < state["best_val_loss"] * (1 - cfg.min_improvement):
            state.update(best_step=target, best_val_loss=val, bad_ticks=0)
            write_best(ema.net, target, val, state["history"])
        else:
            state["bad_ticks"] += 1
        state["step"] = target
        if state["bad_ticks"] >= cfg.patience:
            state.update(finished=True, stopped=f"early stop: no {cfg.min_improvement:g} relative improvement of the held-out loss in {cfg.patience} ticks")
        elif target >= cfg.steps:
            state.update(finished=True, stopped=f"reached steps = {cfg.steps}")
        if progress:
            print(f"priorshift adapt: step {target}: held-out loss {val:.5f} (best {state['best_val_loss']:.5f} at step {state['best_step']})")
        atomic_write_json(state_path, state)
        if not state["finished"] and stop_at is not None and target >= stop_at:
            return None
    if not json.loads(prior_path.with_suffix(".json").read_text()).get("adaptation", {}).get("stopped"):
        # the final record: rewrite the best prior's JSON with the full history and why the run stopped
        from priorshift.diffusion.checkpoint import load_prior

        best = load_prior(prior_path)
        config = dict(best.config)
        config["adaptation"] = {**config["adaptation"], "history": state["history"], "stopped": state["stopped"], "steps_run": state["step"]}
        save_prior(prior_path, best.net, {k: v for k, v in config.items() if k not in ("format", config.get("architecture", "unet"), "weights_dtype")})
    return AdaptResult(
        path=prior_path, history=[tuple(h) for h in state["history"]], best_step=int(state["best_step"]), best_val_loss=float(state["best_val_loss"]),
        initial_val_loss=float(state["history"][0][1]), stopped=state["stopped"], n_train=len(tr), n_val=len(va), steps_run=int(state["step"]),
    )
