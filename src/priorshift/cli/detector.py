"""The detector of ``priorshift score``, built once from its options by :func:`priorshift.tasks.make_detector` (the
task's settings, ``--param`` / ``--plan``); and why an operator's ``noise=`` would not act on it."""

from __future__ import annotations

from priorshift.io import toml_value

from ._common import _plain


def _build_detector(args, prior, operator):
    """The detector asked for, with the task's settings for it under ``args.param_values`` / ``args.plan_values``
    (``--param`` / ``--plan`` over the [param] / [plan] of ``--config``). With ``--measurements`` an image detector
    reconstructs them first: ``--plan`` is then its reconstruction's plan, and ``--param plan.K=V`` its own."""
    import copy

    from priorshift.registry import get
    from priorshift.tasks import make_detector

    params = copy.deepcopy(dict(args.param_values))
    inputs = "measurements" if args.measurements is not None else None
    reconstruction = None
    if inputs == "measurements" and get("detector", args.detector).input_kind == "images":
        reconstruction = dict(args.plan_values) or None
    else:
        plan = {**params.pop("plan", {}), **args.plan_values}
        if plan:
            params["plan"] = plan
    return make_detector(args.detector, prior, operator, task=args.task, params=params, reconstruction=reconstruction, inputs=inputs,
                         progress=None if args.quiet else True, label=f"--detector {args.detector}", source=lambda key: _param_source(args, key))


def _noise_ignored(det, detector: str) -> str | None:
    """Why ``det`` would not act on ``operator.noise_std`` (the end of an error message), or ``None`` when it may:
    the detector declares it ignores it (a ``uses_noise_std`` attribute), or, undeclared, its sampling plan's
    sampler declares so (``@uses_noise_std(False)``: DPS, Langevin). Detectors that declare neither are given the
    benefit of the doubt. With ``--measurements``, a ``noise=`` in ``--operator`` can only act through the detector."""
    declared = getattr(det, "uses_noise_std", None)
    if declared is False:
        return f"--detector {detector} does not use the noise level, so with --measurements the setting would change nothing; drop noise= from --operator"
    plan = getattr(det, "plan", None)
    if declared is None and getattr(getattr(plan, "sampler_fn", None), "uses_noise_std", None) is False:
        users = ", ".join(n for n in _sampler_names() if getattr(_sampler(n), "uses_noise_std", False))
        return (f"sampler {plan.sampler!r} does not use the noise level (its measurement step is set by zeta), so with --measurements the "
                f"setting would change nothing; drop noise= from --operator, or choose a sampler that weighs the data by it: "
                f"--plan sampler=projection (samplers that use it: {users})")
    return None


def _sampler_names() -> list[str]:
    from priorshift.registry import names

    return names("sampler")


def _sampler(name: str):
    from priorshift.registry import get

    return get("sampler", name)


def _param_source(args, key: str) -> str:
    """Where detector parameter ``key`` was set: ``--param key=RAW``, ``--config FILE [param] key = VALUE`` or ``--plan``;
    a field of the sampling plan (``plan.K``): ``--plan K=RAW``, ``--param plan.K=RAW`` or ``--config FILE [plan] K = VALUE``."""
    if key.startswith("plan."):
        sub = key[len("plan."):]
        for flag, items, name in (("--plan", args.plan, sub), ("--param", args.param, key)):
            for item in reversed(items or ()):
                k, _, v = item.partition("=")
                if k == name:
                    return f"{flag} {name}={v}"
        if sub in getattr(args, "file_plan", ()) or key in getattr(args, "file_plan", ()):
            table, value = ("[plan]", args.plan_values.get(sub)) if sub in args.file_plan else ("[param] plan", args.param_values.get("plan", {}).get(sub))
            return f"--config {args.config}: {table} {sub} = {toml_value(_plain(value)) if value is not None else '?'}"
        return f"--plan {sub}"
    for item in reversed(args.param or ()):
        k, _, v = item.partition("=")
        if k == key:
            return f"--param {key}={v}"
    if key in getattr(args, "file_params", ()):
        return f"--config {args.config}: [param] {key} = {toml_value(_plain(args.param_values[key]))}"
    if key == "plan" and args.plan_values:
        return f"--plan {','.join(args.plan_values)}"
    return f"--param {key}"


def _init_params(cls) -> list[str]:
    from priorshift.tasks import _keyword_params

    return _keyword_params(cls)


def _sampler_defaults(name: str) -> dict:
    """A registered sampler's own parameters with their defaults (``None`` defaults left out)."""
    import inspect

    from priorshift.samplers.plan import _RESERVED

    fn = _sampler(name)
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and k not in _RESERVED and p.default is not inspect.Parameter.empty and p.default is not None}
