"""The options of ``priorshift score`` and its config.toml: read and check the file, apply it under the command line,
resolve a run's settings and write them back (``--config`` reruns the run); the ``--device`` check."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import priorshift
from priorshift.io import toml_dumps, toml_value

from ._common import _drop_none, _plain
from .detector import _init_params, _sampler_defaults


def _toml_loads(text: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    return tomllib.loads(text)


# What a score config.toml may set: the options of `priorshift score` (by their argparse names), [param] and
# [plan] (the detector's parameters and sampling plan) and [run] (what the run resolved to and cost; not read).
SCORE_CONFIG_KEYS = {"task": str, "prior": str, "detector": str, "operator": str, "mask": str, "measurements": str, "images": str,
                     "value_range": str, "fit": str, "fit_kind": str, "seed": int, "batch_size": int, "device": str, "threads": int, "out": str,
                     "param": dict, "plan": dict, "run": dict}
_CONFIG_PATH_KEYS = ("mask", "measurements", "images", "fit", "out")
VALUE_RANGE_CHOICES = ["uint8", "uint16", "unit", "symmetric"]


def _task_names() -> list[str]:
    from priorshift.tasks import TASKS

    return list(TASKS)


def _detector_names() -> list[str]:
    from priorshift.registry import names

    return names("detector")


def _add_score_arguments(sc, *, suppress: bool = False) -> None:
    """The options of ``score``; every help says its default. ``suppress``: no defaults at all, so that parsing
    tells which options were given (``--config`` takes the others from its file)."""

    def add(*flags, default=None, **kw):
        sc.add_argument(*flags, default=argparse.SUPPRESS if suppress else default, **kw)

    add("--config", metavar="FILE",
        help="rerun a run: the config.toml it wrote (or its directory) — prior, operator with its noise, detector with every parameter, "
             "plan, seeds, batch size, data; options given with it override the file's values (--param / --plan key by key; another "
             "--detector drops the file's [param] and [plan]); relative paths in the file are relative to it (default: none)")
    add("--task", help="a named task (" + ", ".join(_task_names()) + "): its prior, operator and settings as defaults — its sampling plan "
        "for every detector that samples the posterior (an image detector's reconstruction included), its posterior samples, and "
        "KLIP's tuned window and block (default: none)")
    add("--prior", help="bundled prior name or checkpoint path (default: the task's)")
    add("--detector", default="klip", help="a registered detector: " + ", ".join(_detector_names()) + " (default: %(default)s)")
    add("--param", action="append", default=[], metavar="K=V",
        help="a detector parameter, e.g. window=0.4,0.75 or block=4; repeatable (default: none — the detector's defaults, with --task the task's settings)")
    add("--plan", action="append", default=[], metavar="K=V",
        help="a sampling-plan field or sampler parameter, e.g. sampler=dps, steps=50, zeta=0.1, jacobian=False; repeatable; an image "
             "detector scoring --measurements reconstructs them with this plan (its own plan, if any: --param plan.K=V) "
             "(default: none — the detector's own plan, with --task the task's)")
    add("--measurements", metavar="Y.npy", help="measurements, (N, ...) as the operator produces them (default: none; give this or --images)")
    add("--images", metavar="X.npy",
        help="images (N, 1, H, W) or (N, H, W): uint8 [0, 255], or float [0, 1] / [-1, 1] (see --value-range); measured with the operator "
             "first (default: none; give this or --measurements)")
    add("--value-range", choices=VALUE_RANGE_CHOICES,
        help="how --images / --fit image files map to [-1, 1]: uint8 [0, 255], uint16, unit [0, 1] or symmetric [-1, 1] "
             "(default: by dtype and range — float data within [0, 1] is read as [0, 1], which [-1, 1] data without "
             "negative values cannot be told from; the reading used is printed and recorded in config.json)")
    add("--fit", metavar="ID.npy", help="in-distribution data for detectors that are calibrated, read as the scored input is: images "
        "with --images (measured with the operator when the detector scores measurements), measurements with --measurements "
        "(see --fit-kind) (default: none)")
    add("--fit-kind", choices=["images", "measurements"],
        help="what --fit holds, when not what the scored input holds: images (value rule of --images, measured with the operator "
             "for a detector of measurements) or measurements (read as is) (default: the kind of --images / --measurements)")
    add("--operator", metavar="SPEC",
        help="NAME[:k=v,...]: ct:views=20,noise=0.5 | inpaint:p=0.5,block=4 | blur:kernel=7,sigma=1.5,noise=0.02 | sr:factor=2 | mri:accel=4 | "
             "identity:noise=0.1 (default: the task's)")
    add("--mask", metavar="MASK.npy", help="inpainting / MRI: a mask (1 = observed) instead of the spec's random one (default: none)")
    add("--batch-size", type=int, default=16, help="images per batch; the result does not depend on it (default: %(default)s)")
    add("--seed", type=int, default=0, help="image i uses seed + i for its noise and posterior samples (default: %(default)s)")
    add("--device", default="cpu", help="torch device for the prior and every tensor: cpu, cuda, cuda:N (default: %(default)s)")
    add("--threads", type=int, default=0, help="torch CPU threads, 0 = torch's choice (default: %(default)s)")
    add("--out", default="out/score", help="output directory, written atomically (default: %(default)s; with --config: the file's)")
    add("--overwrite", action="store_true", default=False, help="replace an existing output directory (default: off)")
    add("--quiet", action="store_true", default=False, help="no progress output (default: off)")
    add("--distributed", action="store_true", default=False,
        help="run under torchrun (torchrun --nproc-per-node N -m priorshift score ... --distributed): each rank scores "
             "its share of the batches into OUT.partial/, rank 0 merges them into --out; the same command re-run after a "
             "failure resumes without scoring finished samples again (default: off)")


def read_score_config(path) -> tuple[Path, dict]:
    """Read and check a score ``config.toml`` (or the directory holding one): ``(file, settings)``. Relative paths
    in it are relative to the file's directory. Every failure is a one-line ``ValueError`` naming the file."""
    from priorshift.diffusion.checkpoint import bundled_priors

    file = Path(path)
    if file.is_dir():
        file = file / "config.toml"
    if not file.is_file():
        raise ValueError(f"--config {path}: no such file (give the config.toml a score run wrote, or its directory)")
    try:
        cfg = _toml_loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"--config {file} is not a UTF-8 text file") from None
    except ValueError as e:  # tomllib.TOMLDecodeError
        raise ValueError(f"--config {file} is not valid TOML: {e}") from None
    unknown = sorted(set(cfg) - set(SCORE_CONFIG_KEYS))
    if unknown:
        more = f" (and {', '.join(map(repr, unknown[1:]))})" if len(unknown) > 1 else ""
        raise ValueError(f"--config {file}: unknown key {unknown[0]!r}{more}; a score config takes {', '.join(SCORE_CONFIG_KEYS)}")
    names = {str: "a string", int: "an integer", dict: "a table"}
    for key, value in cfg.items():
        kind = SCORE_CONFIG_KEYS[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"--config {file}: {key} must be {names[kind]}, got {toml_value(_plain(value)) if not isinstance(value, dict) else 'a table'}")
    if cfg.get("value_range") not in (None, *VALUE_RANGE_CHOICES):
        raise ValueError(f"--config {file}: value_range must be one of {', '.join(VALUE_RANGE_CHOICES)}, got {cfg['value_range']!r}")
    if cfg.get("fit_kind") not in (None, "images", "measurements"):
        raise ValueError(f"--config {file}: fit_kind must be images or measurements, got {cfg['fit_kind']!r}")
    if not isinstance(cfg.get("param", {}).get("plan", {}), dict):
        raise ValueError(f"--config {file}: [param] plan must be a table (or use [plan])")
    base = file.parent.absolute()
    for key in _CONFIG_PATH_KEYS:
        if key in cfg and not Path(cfg[key]).expanduser().is_absolute():
            cfg[key] = str(base / cfg[key])
    if "prior" in cfg and cfg["prior"] not in bundled_priors() and not Path(cfg["prior"]).expanduser().is_absolute():
        cfg["prior"] = str(base / cfg["prior"])
    return file, cfg


def _explicit_score_flags(argv) -> set[str]:
    """The ``score`` options given on the command line ``argv`` (argparse names), whatever their value."""
    tail = list(argv or ())
    for i, a in enumerate(tail):
        if not a.startswith("-"):  # the sub-command (global options come before it)
            tail = tail[i + 1:]
            break
    p = argparse.ArgumentParser(add_help=False)
    _add_score_arguments(p, suppress=True)
    given, _ = p.parse_known_args(tail)
    return set(vars(given))


def _apply_score_config(args) -> None:
    """Parse ``--param`` / ``--plan`` into ``args.param_values`` / ``args.plan_values`` and, with ``--config``, take
    every setting the command line does not give from the file: options given win, ``--param`` / ``--plan`` win
    key by key; another ``--detector`` drops the file's [param] and [plan], another ``--plan sampler=`` the
    file's sampler parameters, and ``--measurements`` / ``--images`` replace the file's input."""
    import copy

    from priorshift.operators.spec import parse_pairs
    from priorshift.tasks import PLAN_FIELDS

    param, plan = parse_pairs(args.param, "--param"), parse_pairs(args.plan, "--plan")
    args.from_file, args.file_params, args.file_plan, args.recorded_run = set(), set(), set(), {}
    if args.config:
        file, cfg = read_score_config(args.config)
        args.config = str(file)
        given = _explicit_score_flags(getattr(args, "argv", ()))
        if given & {"measurements", "images"}:
            cfg.pop("measurements", None), cfg.pop("images", None)
        if "detector" in given and args.detector != cfg.get("detector", "klip"):
            cfg.pop("param", None), cfg.pop("plan", None)
        file_param, file_plan = copy.deepcopy(cfg.pop("param", {})), cfg.pop("plan", {})
        if "sampler" in plan and plan["sampler"] != file_plan.get("sampler"):
            file_plan = {k: v for k, v in file_plan.items() if k in PLAN_FIELDS and k != "sampler"}
        args.recorded_run = cfg.pop("run", {})
        for key, value in cfg.items():
            if key not in given:
                setattr(args, key, value)
                args.from_file.add(key)
        args.file_params = set(file_param) - set(param)
        args.file_plan = {k for k in file_plan if k not in plan} | {f"plan.{k}" for k in file_param.get("plan", {}) if k not in param.get("plan", {})}
        inner = {**file_param.pop("plan", {}), **param.pop("plan", {})}
        param = {**file_param, **param, **({"plan": inner} if inner else {})}
        plan = {**file_plan, **plan}
    args.param_values, args.plan_values = param, plan


def check_device(name: str):
    """``--device NAME`` as a ``torch.device``; a clear error when it does not exist or is not available here."""
    from priorshift._checks import check_device as check

    return check(name, "--device")


def _file_digest(path) -> str | None:
    """The first 16 hex digits of a file's SHA-256 (``None`` for no file)."""
    if not path or not Path(path).is_file():
        return None
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _resolved_detector_settings(args, det) -> tuple[dict, dict]:
    """``(param, plan)`` for config.toml: the detector's every parameter (its defaults included: the ones of its
    ``config()`` that are parameters) and its resolved sampling plan (for an image detector scoring measurements:
    its reconstruction's; its own plan, if it has one, in ``param``). Building the detector from them gives the same
    detector; ``tests/test_cli_once.py`` checks that for every registered one. A detector without ``config()``:
    the parameters and plan as given."""
    from priorshift.detectors import FromMeasurements

    wrapped = isinstance(det, FromMeasurements)
    own_plan = args.param_values.get("plan", {}) if wrapped else {**args.param_values.get("plan", {}), **args.plan_values}
    given_param = {k: v for k, v in args.param_values.items() if k != "plan"}
    if wrapped and own_plan:
        given_param["plan"] = own_plan
    given_plan = args.plan_values if wrapped else own_plan
    base = det.image_detector if wrapped else det
    if not hasattr(base, "config"):
        return _drop_none(_plain(given_param)), _drop_none(_plain(given_plan))
    accepted = set(_init_params(type(base))) - {"plan", "progress"}
    param = {**{k: v for k, v in base.config().items() if k in accepted}, **given_param}
    own = _resolved_plan(base) if wrapped else None
    if own is not None:
        param["plan"] = own
    plan = _resolved_plan(det)
    plan = given_plan if plan is None else plan
    return _drop_none(_plain(param)), _drop_none(_plain(plan))


def _resolved_plan(det) -> dict | None:
    """``det``'s sampling plan (a ``plan`` parameter and attribute) as [plan] fields and sampler parameters, the
    sampler's defaults included; ``None`` when it takes no plan."""
    describe = getattr(getattr(det, "plan", None), "describe", None)
    if "plan" not in _init_params(type(det)) or not callable(describe):
        return None
    d = describe()
    return {**{k: v for k, v in d.items() if k != "params"}, **_sampler_defaults(d["sampler"]), **d.get("params", {})}


def _spec_with_noise(args, spec, op, noise_acts: bool) -> str | None:
    """``--operator``'s spec with the operator's noise level written out (``noise_std=``) where it acts; without
    ``--operator``, the task's operator as a spec (:meth:`~priorshift.tasks.Task.operator_spec`, which builds the
    task's operator — tested), left out when its noise would be refused."""
    if spec is None:
        from priorshift.tasks import get_task

        task = get_task(args.task) if args.task else None
        text = task.operator_spec() if task is not None else None
        return text if text and (noise_acts or "noise_std" not in task.operator_params) else None
    if "noise_std" in spec.params or not noise_acts:
        return spec.text  # with --measurements and a detector that ignores the noise level, noise= is refused
    return spec.with_param("noise_std", float(op.noise_std)).text


def _abs_prior(name: str) -> str:
    from priorshift.diffusion.checkpoint import bundled_priors

    return name if name in bundled_priors() else str(Path(name).expanduser().absolute())


def _score_config_toml(args, *, prior_name, prior, op, spec, noise_acts: bool, det, kind, n, out, config, readings) -> str:
    """The resolved configuration of a score run as a TOML document that ``score --config`` reads back (``spec``:
    ``--operator`` as read; ``noise_acts``: whether the operator's noise level acts on this run)."""
    import datetime
    import os
    import platform

    param, plan = _resolved_detector_settings(args, det)
    doc = {"task": args.task, "prior": _abs_prior(str(prior_name)), "detector": args.detector, "operator": _spec_with_noise(args, spec, op, noise_acts)}
    doc.update({k: str(Path(getattr(args, k)).expanduser().absolute()) for k in ("mask", "measurements", "images", "fit") if getattr(args, k)})
    if args.fit and getattr(args, "fit_kind", None):
        doc["fit_kind"] = args.fit_kind  # how --fit was read, so that --config reads it the same way
    doc.update(value_range=args.value_range, seed=args.seed, batch_size=args.batch_size, device=args.device, threads=args.threads,
               out=str(out.absolute()), param=param, plan=plan)
    run = {
        "operator": repr(op), "noise_std": float(op.noise_std), "input_kind": kind, "n": n, "value_range": readings or None,
        "inputs": config.get("inputs"), "input_sha256": _file_digest(args.measurements or args.images), "fit_sha256": _file_digest(args.fit),
        "prior_sha256": (getattr(prior, "config", None) or {}).get("prior_sha256"),
        "weights_sha256": (getattr(prior, "config", None) or {}).get("weights_sha256"), "detector": det.config() if hasattr(det, "config") else None,
        **{k: config[k] for k in ("nfe_total", "nfe_fit", "nfe_per_image", "seconds", "figure_error") if k in config},
        "command": "priorshift " + " ".join(shlex.quote(str(a)) for a in getattr(args, "argv", ())),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs",
        "versions": config.get("versions"),
    }
    doc["run"] = run
    header = (
        f"# priorshift score: the resolved configuration of this run (priorshift {priorshift.__version__}).\n"
        f"# Rerun it: priorshift score --config {out.absolute() / 'config.toml'} --out NEW\n"
        "# Options given with --config override the values here (--param / --plan key by key). Image i uses seed + i.\n"
        "# [param] / [plan]: the detector's every parameter and its sampling plan; values left out (None) take their default.\n"
        "# [run]: what the run resolved to and cost, for the record; it is not read back.\n\n"
    )
    return header + toml_dumps(_drop_none(_plain(doc)))
