"""Named task definitions: a shipped prior, a measurement setup and the detector settings tuned for it.

One place for the settings that the demo, the CLI defaults and the benchmarks share. Every number here was
chosen on tuning data only, never on the sets reported:

* ``ct``: DPS (ζ on in-distribution tuning images, ``benchmarks/dps_step.py``) with KLIP's window and block
  tuned on the CT *star* tuning split (``benchmarks/klip_experiment.py``, ``results/klip-ct``). With the
  ΠGDM step, star tuning transfers no better to lesions (``results/klip-ct-sweep``), so the tuned DPS
  configuration stays. All of it was tuned with ``phantom-ct-64``; the task's prior is ``phantom-ct-64-long``
  (issue 19: the same network trained 1.9× longer, 0.92× the held-out MSE), the settings carried over;
* ``fmnist-*``: ΠGDM (KLIP's default step). The dataset-level window and block were chosen with the sibling
  prior ``fashion-mnist-0-7-32`` on its own classes 0-7 against the two classes it never saw (a global,
  semantic shift found without MNIST), the image-level ones (maps) on the Fashion-MNIST *star* tuning split
  (``benchmarks/klip_detects.py``, ``results/klip-detects``). ``extra["dps_zeta"]``: the DPS step chosen by
  ``dps_step.py`` for reconstructions with DPS::

    task = get_task("ct")
    operator = task.make_operator()
    klip = task.klip(load_prior(task.prior))              # dataset-level settings
    klip_map = task.klip(prior, objective="image")        # the settings tuned for the maps

Any registered detector gets a task's settings through :func:`make_detector` (the CLI's ``score --task`` and the
bench's ``task:`` domains both build their detectors with it); :meth:`Task.detector_settings` says which.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

__all__ = ["Task", "TASKS", "get_task", "make_detector", "PLAN_FIELDS"]

# A sampling plan's own fields (the rest of a plan mapping are its sampler's parameters).
PLAN_FIELDS = ("sampler", "steps", "schedule", "sigma_min", "sigma_max")


@dataclass(frozen=True)
class Task:
    """``prior`` (a bundled name), ``operator`` (a registered name) with ``operator_params``, the sampling
    ``plan`` (:class:`priorshift.samplers.SamplingPlan` fields), KLIP's ``samples`` and its tuned settings per
    objective: ``klip_settings["dataset"]`` (AUROC of the image score) and ``["image"]`` (block AUROC of the map);
    ``detector_params``: further settings per registered detector name (e.g. the tissue rule of ``local-residual``)."""

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
    detector_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

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

        kw = self.settings_under("klip", overrides, objective=objective)
        return KLIP(prior, operator if operator is not None else self.make_operator(), **kw)

    def operator_spec(self) -> str | None:
        """The task's operator as an operator spec (``ct:image_size=64,n_views=20,noise_std=0.5``), or ``None``
        when a parameter is not a plain value (a mask drawn by a function)."""
        if not all(isinstance(v, (bool, int, float, str)) for v in self.operator_params.values()):
            return None
        return self.operator + ":" + ",".join(f"{k}={v!r}" for k, v in self.operator_params.items())

    def plan_under(self, given: Mapping[str, Any] | None = None) -> dict:
        """The task's sampling plan with ``given`` fields over it. A ``given`` plan naming another sampler keeps
        only the task plan's own fields (:data:`PLAN_FIELDS`: steps, schedule, σ range), not its sampler's
        parameters; with DPS it gets the task's DPS step ``extra["dps_zeta"]`` as ``zeta`` unless it sets one."""
        given = dict(given or {})
        base = dict(self.plan)
        if given.get("sampler", base["sampler"]) != base["sampler"]:
            base = {k: v for k, v in base.items() if k in PLAN_FIELDS and k != "sampler"}
            if given["sampler"] == "dps" and "dps_zeta" in self.extra:
                base["zeta"] = self.extra["dps_zeta"]
        return {**base, **given}

    def detector_settings(self, detector: str, *, objective: str = "dataset") -> dict:
        """This task's settings for the registered detector ``detector``, as its keyword parameters: the task's
        sampling plan and posterior sample count to every measurement detector that takes them (KLIP, multiscale
        KLIP), and to KLIP its window and block tuned for ``objective``; to any detector its ``detector_params``. An
        image detector scoring measurements reconstructs with the task's plan (:func:`make_detector`)."""
        from priorshift.registry import get

        cls = get("detector", detector)
        own = dict(self.detector_params.get(detector, {}))
        if cls.input_kind != "measurements":
            return own
        accepted = _keyword_params(cls)
        out = {k: v for k, v in (("plan", dict(self.plan)), ("samples", self.samples)) if k in accepted} | own
        if detector == "klip":
            if objective not in self.klip_settings:
                raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(self.klip_settings)}")
            out.update(self.klip_settings[objective])
        return out

    def settings_under(self, detector: str, given: Mapping[str, Any], *, objective: str = "dataset") -> dict:
        """``given`` keyword parameters of ``detector`` over this task's settings for it; the plans merged by
        :meth:`plan_under`."""
        settings = self.detector_settings(detector, objective=objective)
        out = {**settings, **given}
        if "plan" in settings and isinstance(given.get("plan", {}), Mapping):  # not a SamplingPlan, not None
            out["plan"] = self.plan_under(given.get("plan"))
        return out


def _fmnist_inpaint_mask():
    import torch

    from priorshift.operators import random_block_mask

    return random_block_mask(32, 4, 0.7, generator=torch.Generator().manual_seed(0))


TASKS: dict[str, Task] = {
    "ct": Task(
        name="ct",
        description="sparse-view parallel-beam CT, 20 views, noise σ_y = 0.5 (sinogram units)",
        prior="phantom-ct-64-long",  # since issue 19 (0.92x the held-out MSE); the settings below were tuned with phantom-ct-64
        operator="ct",
        operator_params={"image_size": 64, "n_views": 20, "noise_std": 0.5},
        plan={"sampler": "dps", "steps": 50, "jacobian": False, "zeta": 0.1},
        samples=2,
        klip_settings={"dataset": {"window": (0.40, 0.75), "block": 2}, "image": {"window": (0.30, 0.85), "block": 2}},
        base_block=2,
        extra={"lesion_contrast": -0.15, "dps_zeta": 0.1},
        detector_params={"local-residual": {"foreground": -0.9}, "klip": {"foreground": -0.9}},  # scores come from tissue, not air
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


def _keyword_params(cls) -> list[str]:
    import inspect

    return [n for n, p in inspect.signature(cls.__init__).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]


def _keyword_defaults(cls) -> dict:
    import inspect

    return {n: p.default for n, p in inspect.signature(cls.__init__).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def make_detector(name: str, prior, operator=None, *, task: Task | str | None = None, params: Mapping[str, Any] | None = None,
                  reconstruction: Mapping[str, Any] | None = None, inputs: str | None = None, progress: bool | None = None,
                  label: str | None = None, source: Callable[[str], str] | None = None):
    """The registered detector ``name`` on ``prior`` (and ``operator``, for a detector of measurements), with
    ``params`` (its keyword parameters) over ``task``'s settings for it (:meth:`Task.detector_settings`).

    ``inputs``: what it will be given — ``"measurements"`` (an image detector then reconstructs them first, through
    :class:`~priorshift.detectors.FromMeasurements` with the sampling plan ``reconstruction`` over the task's),
    ``"images"`` (a detector of measurements is refused) or ``None`` (its own kind). ``progress``: the default of
    its ``progress`` parameter, where it has one. Errors are ``ValueError``s naming the detector as ``label``
    (default ``detector 'NAME'``) and a parameter as ``source(key)`` (where it was set; default ``parameter KEY``):
    an unknown parameter, a wrong argument, and a bad value whose message starts with the parameter's name."""
    import copy

    from priorshift.registry import get

    cls = get("detector", name)
    label = label or f"detector {name!r}"
    source = source or (lambda key: f"parameter {key}")
    task = get_task(task) if isinstance(task, str) else task
    given = copy.deepcopy(dict(params or {}))
    accepted = _keyword_params(cls)
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise ValueError(f"{source(unknown[0])} is not a parameter of {label} (its parameters: {', '.join(accepted)})")
    if inputs == "images" and cls.input_kind == "measurements":
        raise ValueError(f"{label} scores measurements; give it measurements (a measurement domain), not images")
    defaults = _keyword_defaults(cls)
    for key, value in given.items():  # booleans are not numbers: samples=True is not 1
        d = defaults.get(key)
        if isinstance(value, bool) and isinstance(d, (int, float)) and not isinstance(d, bool):
            raise ValueError(f"{source(key)}: {key} must be a number (default {d!r}), got {value!r}")
    kw = task.settings_under(name, given) if task is not None else given
    if progress is not None and "progress" in accepted:
        kw.setdefault("progress", progress)
    try:
        det = cls(prior, operator, **kw) if cls.input_kind == "measurements" else cls(prior, **kw)
    except TypeError as e:
        raise ValueError(f"{label}: {e} (its parameters: {', '.join(accepted)})") from None
    except ValueError as e:
        key = str(e).split(" ", 1)[0].rstrip(":")
        if key in given:  # the detector checks its parameters; the caller says where this one was set
            raise ValueError(f"{source(key)}: {e}") from None
        if isinstance(given.get("plan"), Mapping) and key in given["plan"]:  # a field of the plan it was given
            raise ValueError(f"{source('plan.' + key)}: {e}") from None
        raise
    if inputs == "measurements" and cls.input_kind == "images":
        from priorshift.detectors import FromMeasurements

        plan = task.plan_under(reconstruction) if task is not None else (dict(reconstruction) if reconstruction else None)
        det = FromMeasurements(det, operator, plan=plan)
    return det
