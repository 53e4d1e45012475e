"""Named task definitions: a shipped prior, a measurement setup and the detector settings tuned for it.

One place for the settings that the demo, the CLI defaults and the benchmarks share. Every number here was
chosen on tuning data only, never on the sets reported:

* ``ct``: DPS (ζ on in-distribution tuning images, ``benchmarks/dps_step.py``) with KLIP's window and block
  tuned on the CT *star* tuning split (``benchmarks/klip_experiment.py``, ``results/klip-ct``). With the
  ΠGDM step, star tuning transfers no better to lesions (``results/klip-ct-sweep``), so the tuned DPS
  configuration stays;
* ``fmnist-*``: ΠGDM (KLIP's default step). The dataset-level window and block were chosen with the sibling
  prior ``fashion-mnist-0-7-32`` on its own classes 0-7 against the two classes it never saw (a global,
  semantic shift found without MNIST), the image-level ones (maps) on the Fashion-MNIST *star* tuning split
  (``benchmarks/klip_detects.py``, ``results/klip-detects``). ``extra["dps_zeta"]``: the DPS step chosen by
  ``dps_step.py`` for reconstructions with DPS::

    task = get_task("ct")
    operator = task.make_operator()
    klip = task.klip(load_prior(task.prior))              # dataset-level settings
    klip_map = task.klip(prior, objective="image")        # the settings tuned for the maps
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["Task", "TASKS", "get_task"]


@dataclass(frozen=True)
class Task:
    """``prior`` (a bundled name), ``operator`` (a registered name) with ``operator_params``, the sampling
    ``plan`` (:class:`priorshift.samplers.SamplingPlan` fields), KLIP's ``samples`` and its tuned settings per
    objective: ``klip_settings["dataset"]`` (AUROC of the image score) and ``["image"]`` (block AUROC of the map)."""

    name: str
    description: str
    prior: str
    operator: str
    operator_params: Mapping[str, Any]
    plan: Mapping[str, Any]
    samples: int
    klip_settings: Mapping[str, Mapping[str, Any]]
    base_block: int
    extra: Mapping[str, Any] = field(default_factory=dict)

    def make_operator(self, **overrides):
        """The task's forward operator (``overrides`` replace its parameters, e.g. ``noise_std``)."""
        from priorshift.operators import make_operator

        params = dict(self.operator_params)
        if "mask" in params and callable(params["mask"]):
            params["mask"] = params["mask"]()
        return make_operator(self.operator, **{**params, **overrides})

    def klip(self, prior, operator=None, *, objective: str = "dataset", **overrides):
        """KLIP with this task's plan, samples and tuned window/block for ``objective`` ("dataset" or "image")."""
        from priorshift.detectors import KLIP

        if objective not in self.klip_settings:
            raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(self.klip_settings)}")
        kw = {"plan": dict(self.plan), "samples": self.samples, **self.klip_settings[objective], **overrides}
        return KLIP(prior, operator if operator is not None else self.make_operator(), **kw)


def _fmnist_inpaint_mask():
    import torch

    from priorshift.operators import random_block_mask

    return random_block_mask(32, 4, 0.7, generator=torch.Generator().manual_seed(0))


TASKS: dict[str, Task] = {
    "ct": Task(
        name="ct",
        description="sparse-view parallel-beam CT, 20 views, noise σ_y = 0.5 (sinogram units)",
        prior="phantom-ct-64",
        operator="ct",
        operator_params={"image_size": 64, "n_views": 20, "noise_std": 0.5},
        plan={"sampler": "dps", "steps": 50, "jacobian": False, "zeta": 0.1},
        samples=2,
        klip_settings={"dataset": {"window": (0.40, 0.75), "block": 2}, "image": {"window": (0.30, 0.85), "block": 2}},
        base_block=2,
        extra={"lesion_contrast": -0.15, "dps_zeta": 0.1},
    ),
    "fmnist-blur": Task(
        name="fmnist-blur",
        description="Gaussian deblurring (7×7 kernel, σ_blur = 1.5 px, circular), noise σ_y = 0.02",
        prior="fashion-mnist-32",
        operator="blur",
        operator_params={"kernel_size": 7, "sigma": 1.5, "noise_std": 0.02},
        plan={"sampler": "pigdm", "steps": 50},
        samples=2,
        klip_settings={"dataset": {"window": (0.35, 0.45), "block": 16}, "image": {"window": (0.65, 0.70), "block": 2}},
        base_block=2,
        extra={"dps_zeta": 1.5},
    ),
    "fmnist-inpaint": Task(
        name="fmnist-inpaint",
        description="inpainting (random 4×4-px blocks, 70% observed), noise σ_y = 0.02",
        prior="fashion-mnist-32",
        operator="inpainting",
        operator_params={"mask": _fmnist_inpaint_mask, "noise_std": 0.02},
        plan={"sampler": "pigdm", "steps": 50},
        samples=2,
        klip_settings={"dataset": {"window": (0.25, 0.45), "block": 4}, "image": {"window": (0.75, 0.80), "block": 8}},
        base_block=2,
        extra={"dps_zeta": 0.6},
    ),
}


def get_task(name: str) -> Task:
    """The task named ``name``; a ``ValueError`` listing the choices otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}") from None
