"""The detector of ``priorshift score``, built from its options: the registry, the task's KLIP defaults, ``--param`` /
``--plan``; and the check that an operator's ``noise=`` acts."""

from __future__ import annotations

from priorshift.io import toml_value

from ._common import _plain


def _spec_keys(spec: str | None) -> set[str]:
    """The parameter names an operator spec sets explicitly (aliases resolved)."""
    if not spec:
        return set()
    _, _, rest = spec.partition(":")
    from priorshift.operators.spec import PARAM_ALIASES

    return {PARAM_ALIASES.get(k, k) for k in (item.partition("=")[0] for item in rest.split(",")) if k}


def _check_noise_acts(args, det) -> None:
    """With ``--measurements``, the spec's ``noise=`` describes data that already exists: it can only act through
    the detector. Refuse it when the detector declares it ignores ``operator.noise_std`` (a ``uses_noise_std``
    attribute), or, undeclared, when its sampling plan's sampler declares so (``@uses_noise_std(False)``: DPS,
    Langevin). Detectors that declare neither are given the benefit of the doubt."""
    if args.measurements is None or "noise_std" not in _spec_keys(args.operator):
        return
    declared = getattr(det, "uses_noise_std", None)
    plan = getattr(det, "plan", None)
    sampler = getattr(plan, "sampler_fn", None)
    if declared is None and getattr(sampler, "uses_noise_std", None) is False:
        users = ", ".join(n for n in _sampler_names() if getattr(_sampler(n), "uses_noise_std", False))
        raise ValueError(
            f"--operator {args.operator!r} sets noise=, but sampler {plan.sampler!r} does not use the noise level (its "
            f"measurement step is set by zeta), so with --measurements the setting would change nothing; drop noise= from "
            f"--operator, or choose a sampler that weighs the data by it: --plan sampler=projection (samplers that use it: {users})"
        )
    if declared is False:
        raise ValueError(f"--operator {args.operator!r} sets noise=, but --detector {args.detector} does not use the noise level, so "
                         "with --measurements the setting would change nothing; drop noise= from --operator")


def _sampler_names() -> list[str]:
    from priorshift.registry import names

    return names("sampler")


def _sampler(name: str):
    from priorshift.registry import get

    return get("sampler", name)


def _build_detector(args, prior, operator, image_size: int):
    """The detector asked for, from the registry, with the task's defaults (KLIP) and ``args.param_values`` /
    ``args.plan_values`` (``--param`` / ``--plan`` over the [param] / [plan] of ``--config``)."""
    import copy

    from priorshift.registry import get
    from priorshift.tasks import get_task

    cls = get("detector", args.detector)
    params = copy.deepcopy(dict(args.param_values))
    plan = {**params.pop("plan", {}), **args.plan_values}
    accepted = _init_params(cls)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"{_param_source(args, unknown[0])} is not a parameter of --detector {args.detector} (its parameters: {', '.join(accepted)})")
    if args.detector == "klip" and args.task:
        task = get_task(args.task)
        base = {"plan": dict(task.plan), "samples": task.samples, **task.klip_settings["dataset"]}
        plan = {**base.pop("plan"), **plan}
        params = {**base, **params}
    if plan:
        params["plan"] = plan
    if args.detector == "klip" and "window" in params:
        from priorshift.detectors.klip import window_steps

        try:
            window_steps(params["window"], 10**6)  # its form and range; the detector checks it against its schedule
        except ValueError as e:
            raise ValueError(f"{_param_source(args, 'window')}: {e}") from None
    if args.quiet is False and "progress" in accepted:
        params.setdefault("progress", True)
    try:
        if cls.input_kind == "measurements":
            return cls(prior, operator, **params)
        return cls(prior, **params)
    except TypeError as e:
        raise ValueError(f"--detector {args.detector}: {e} (its parameters: {', '.join(accepted)})") from None


def _wrap_detector(args, det, operator, kind: str):
    """An image detector scoring measurements goes through :class:`~priorshift.detectors.FromMeasurements`."""
    if kind == "measurements" and det.input_kind == "images":
        from priorshift.detectors import FromMeasurements

        return FromMeasurements(det, operator, plan=args.plan_values or None)
    return det


def _param_source(args, key: str) -> str:
    """Where detector parameter ``key`` was set: ``--param key=RAW`` or ``--config FILE [param] key = VALUE``."""
    for item in reversed(args.param or ()):
        k, _, v = item.partition("=")
        if k == key:
            return f"--param {key}={v}"
    if key in getattr(args, "file_params", ()):
        return f"--config {args.config}: [param] {key} = {toml_value(_plain(args.param_values[key]))}"
    return f"--param {key}"


def _init_params(cls) -> list[str]:
    import inspect

    return [n for n, p in inspect.signature(cls.__init__).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]


def _sampler_defaults(name: str) -> dict:
    """A registered sampler's own parameters with their defaults (``None`` defaults left out)."""
    import inspect

    from priorshift.samplers.plan import _RESERVED

    fn = _sampler(name)
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and k not in _RESERVED and p.default is not inspect.Parameter.empty and p.default is not None}
