"""The ``priorshift`` command line: ``demo``, ``train``, ``score``, ``bench``, ``report``, ``adapt``, ``priors``, ``datasets``."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import priorshift

DESCRIPTION = """\
priorshift tells, from indirect measurements y = A(x) + e alone (a sparse-view CT sinogram, a masked or
blurred image, undersampled MRI), whether the image behind them comes from the distribution a diffusion
prior was trained on — and where in the image it does not.

Detectors (`priorshift score --detector NAME`): KLIP (prior↔posterior KL over time windows and spatial
blocks) and every other registered detector, on one diffusion core with exact analytic oracles, forward
operators (CT, inpainting, blur, super-resolution, MRI) and posterior samplers.
Everything runs offline on a CPU; small priors trained by `priorshift train` ship with the package.
"""


def _parse_widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in str(text).split(","))
    except ValueError:
        raise ValueError(f"--widths {text!r} must be comma-separated positive integers, finest level first (e.g. 16,32,64)") from None
    return widths


def _file_sha(name_or_path) -> str:
    from priorshift.diffusion.checkpoint import resolve_prior_path, sha256

    return sha256(resolve_prior_path(name_or_path))


def _check_out_parent(out: Path) -> None:
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"--out {out}: {parent} is a file, not a directory")
            return


def _check_threads(n: int) -> None:
    if n < 0:
        raise ValueError(f"--threads must be >= 0 (0: torch's choice), got {n}")


def _cmd_train(args) -> int:
    import torch

    from priorshift.data import load_dataset
    from priorshift.diffusion.training import TrainConfig, check_run_dir, train, trained_steps
    from priorshift.diffusion.unet import UNetConfig

    # -- validate everything before anything is loaded or created --
    _check_threads(args.threads)
    for flag, value, lo in (("--steps", args.steps, 1), ("--batch-size", args.batch_size, 1), ("--checkpoint-every", args.checkpoint_every, 1),
                            ("--image-size", args.image_size, 8)):
        if value < lo:
            raise ValueError(f"{flag} must be >= {lo}, got {value}")
    if not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    if args.train_size is not None and args.train_size < 1:
        raise ValueError(f"--train-size must be >= 1, got {args.train_size}")
    init_prior = init_meta = None
    if args.init:
        from priorshift.diffusion.checkpoint import load_prior

        init_prior = load_prior(args.init)
        base = init_prior.net.config
        if base.image_size != args.image_size:
            raise ValueError(f"--init {args.init} is a {base.image_size}×{base.image_size} prior; --image-size is {args.image_size}")
        if args.widths is not None and _parse_widths(args.widths) != tuple(base.widths):
            raise ValueError(f"--init {args.init} has widths {','.join(map(str, base.widths))}; drop --widths or give the same")
        if args.no_attention and base.attention:
            raise ValueError(f"--init {args.init} has attention; drop --no-attention")
        init_meta = {"prior": str(args.init), "sha256": init_prior.config.get("sha256") or _file_sha(args.init)}
        unet_kw = {k: v for k, v in base.to_dict().items()}
    else:
        widths = _parse_widths(args.widths or "16,32,64,128")
        unet_kw = dict(image_size=args.image_size, widths=widths, attention=not args.no_attention)
    _check_out_parent(Path(args.out))
    cfg = TrainConfig(
        name=args.name or Path(args.out).name,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        unet=UNetConfig(**unet_kw),
    )
    try:
        cfg.validate()
    except ValueError as e:
        flag = {"image_size": "--image-size", "widths": "--widths", "steps": "--steps", "batch_size": "--batch-size", "lr": "--lr"}
        first = str(e).split(" ", 1)[0]
        raise ValueError(f"{flag.get(first, first)}: {e}") from None
    try:
        check_run_dir(args.out, cfg)
    except ValueError as e:
        raise ValueError(f"--out {e}") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    options, reading = {}, None
    if str(args.data).startswith("npy:"):
        from priorshift.data.datasets import infer_value_range, read_npy

        path = args.data[len("npy:"):]
        if args.value_range:
            options["value_range"] = reading = args.value_range
        elif Path(path).is_file():
            try:
                reading = infer_value_range(read_npy(path), path)
            except ValueError:
                reading = None  # load_dataset below raises the full error (empty, NaN, pickled, out of range)
    elif args.value_range:
        raise ValueError(f"--value-range applies to npy:PATH data only, not {args.data!r}")
    data = load_dataset(args.data, split="train", n=args.train_size, image_size=args.image_size, seed=args.data_seed, **options)
    if reading is not None:
        print(_reading_note("--data", args.data, reading))
    if data.shape[-1] != args.image_size:
        raise ValueError(f"dataset {args.data!r} gives {data.shape[-1]}×{data.shape[-1]} images, not {args.image_size}")
    if data.shape[1] != cfg.unet.channels:
        if init_prior is not None:
            raise ValueError(f"--init {args.init} takes {cfg.unet.channels}-channel images; {args.data!r} has {data.shape[1]}")
        cfg.unet = UNetConfig(**unet_kw, channels=data.shape[1])
        cfg.validate()
    import hashlib

    digest = hashlib.sha256(data.numpy().tobytes()).hexdigest()[:16]
    print(f"priorshift train: {data.shape[0]} training images {tuple(data.shape[1:])} from {args.data!r} (sha256 {digest}) in {time.perf_counter() - t0:.1f}s")
    meta = {
        "dataset": {"spec": args.data, "n": int(data.shape[0]), "image_size": args.image_size, "sha256_16": digest, "seed": args.data_seed,
                    **({"value_range": reading} if reading else {})},
        "command": "priorshift " + " ".join(shlex.quote(a) for a in args.argv),
        **({"init": init_meta} if init_meta else {}),
    }
    grid = Path(args.out) / f"{cfg.name}_samples.png"
    done_before = trained_steps(args.out) == cfg.steps and (Path(args.out) / f"{cfg.name}.safetensors").exists()
    init = None if init_prior is None else {k: v.detach().clone() for k, v in init_prior.net.state_dict().items()}
    path = train(cfg, data, args.out, meta=meta, progress=not args.quiet, init=init)
    if not done_before:
        print(f"priorshift train: wrote {path} and {path.with_suffix('.json').name}")
    if args.grid and not (done_before and grid.exists()):
        from priorshift.diffusion.checkpoint import load_prior
        from priorshift.diffusion.schedules import schedule_for
        from priorshift.operators import Identity
        from priorshift.plotting import save_image_grid
        from priorshift.samplers import sample_unconditional

        prior = load_prior(path)
        y = torch.zeros(64, data.shape[1], args.image_size, args.image_size)
        with torch.no_grad():
            res = sample_unconditional(prior, Identity(), y, schedule_for(prior, 32), seed=list(range(64)))
        save_image_grid(res.x0[:, 0], grid, title=f"{cfg.name}: 64 prior samples (Heun, 32 steps, {res.nfe_per_image:.0f} NFE each)")
        print(f"priorshift train: sample grid {grid}")
    return 0


def _load_npy(path: str, what: str):
    """A measurement (or fit) array as float32, never unpickled; a missing, pickled or empty file is a ValueError."""
    import numpy as np
    import torch

    from priorshift.data.datasets import read_npy

    if not Path(path).is_file():
        raise ValueError(f"{what} file {path!r} does not exist")
    try:
        arr = read_npy(path)
    except ValueError as e:
        raise ValueError(f"{what} {e}") from None
    if arr.shape[:1] == (0,) or arr.size == 0:
        raise ValueError(f"{what} file {path!r} holds 0 samples (shape {arr.shape})")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{what} file {path!r} holds {arr.dtype} values; save a numeric (float) array")
    return torch.from_numpy(np.ascontiguousarray(arr)).float()


def _load_images(path: str, what: str, value_range: str | None):
    """Images from an ``.npy``, converted to [-1, 1] by the rule of :func:`priorshift.data.npy_stack`
    (``value_range`` forces a reading); returns the images and the reading used."""
    from priorshift.data.datasets import npy_images

    if not Path(path).is_file():
        raise ValueError(f"{what} file {path!r} does not exist")
    try:
        return npy_images(path, value_range=value_range)
    except ValueError as e:
        raise ValueError(f"{what} {e}") from None


def _is_integer_npy(path: str) -> bool:
    import numpy as np

    from priorshift.data.datasets import read_npy

    return bool(np.issubdtype(read_npy(path).dtype, np.integer))


def _reading_note(what: str, path: str, reading: str) -> str:
    from priorshift.data.datasets import VALUE_RANGES

    note = f"{what} {path}: read as {VALUE_RANGES[reading]}"
    if reading == "unit":
        note += " (float data within [0, 1]; if it is already in [-1, 1], pass --value-range symmetric)"
    return note


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


# -- TOML: the score config (written by a small emitter, read by tomllib) ----------------------------------
_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_string(s: str) -> str:
    out = []
    for ch in s:
        o = ord(ch)
        if ch in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[ch])
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\u{o:04x}")
        elif 0xD800 <= o <= 0xDFFF:
            raise ValueError(f"the string {s!r} holds a lone surrogate (U+{o:04X}), which TOML cannot represent")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_key(key) -> str:
    if not isinstance(key, str):
        raise TypeError(f"TOML keys are strings, got {key!r}")
    return key if key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key) else _toml_string(key)


def toml_value(value) -> str:
    """One TOML value: str, int (64-bit), float (inf / nan included), bool, a list / tuple of values (an array) or
    a mapping (an inline table). ``None`` and other types are a ``TypeError``: TOML has no null."""
    import math
    from collections.abc import Mapping

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise ValueError(f"the integer {value} does not fit TOML's 64-bit integers")
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # shortest round-trip form; always holds '.' or 'e' (1.0, 1e-08, 1e+16)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"{type(value).__name__} values cannot be written as TOML (got {value!r})")


def toml_dumps(data) -> str:
    """``data`` (a mapping of str keys to TOML values) as a TOML document that :mod:`tomllib` reads back equal
    (tuples come back as lists). Nested mappings become ``[a.b]`` tables, mappings inside lists inline tables."""
    from collections.abc import Mapping

    if not isinstance(data, Mapping):
        raise TypeError(f"a TOML document is a mapping, got {type(data).__name__}")
    lines: list[str] = []

    def table(t: Mapping, path: tuple) -> None:
        own = [(k, v) for k, v in t.items() if not isinstance(v, Mapping)]
        subs = [(k, v) for k, v in t.items() if isinstance(v, Mapping)]
        if path and (own or not subs):  # a table without own keys exists through its sub-tables' headers
            lines.extend(["", "[" + ".".join(_toml_key(p) for p in path) + "]"])
        lines.extend(f"{_toml_key(k)} = {toml_value(v)}" for k, v in own)
        for k, v in subs:
            table(v, (*path, k))

    table(data, ())
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_loads(text: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    return tomllib.loads(text)


def _plain(value):
    """Plain TOML-able values: tuples → lists, paths and devices → str, 0-d numpy / torch values → Python numbers."""
    from collections.abc import Mapping

    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    return str(value)


def _drop_none(value):
    """``value`` without the ``None`` entries TOML cannot hold (a parameter left out takes its default)."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value if v is not None]
    return value


# What a score config.toml may set: the options of `priorshift score` (by their argparse names), [param] and
# [plan] (the detector's parameters and sampling plan) and [run] (what the run resolved to and cost; not read).
SCORE_CONFIG_KEYS = {"task": str, "prior": str, "detector": str, "operator": str, "mask": str, "measurements": str, "images": str,
                     "value_range": str, "fit": str, "seed": int, "batch_size": int, "device": str, "threads": int, "out": str,
                     "param": dict, "plan": dict, "run": dict}
_CONFIG_PATH_KEYS = ("mask", "measurements", "images", "fit", "out")
_PLAN_FIELDS = ("sampler", "steps", "schedule", "sigma_min", "sigma_max")
VALUE_RANGE_CHOICES = ["uint8", "uint16", "unit", "symmetric"]


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

    param, plan = parse_pairs(args.param, "--param"), parse_pairs(args.plan, "--plan")
    args.from_file, args.file_params, args.recorded_run = set(), set(), {}
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
            file_plan = {k: v for k, v in file_plan.items() if k in _PLAN_FIELDS and k != "sampler"}
        args.recorded_run = cfg.pop("run", {})
        for key, value in cfg.items():
            if key not in given:
                setattr(args, key, value)
                args.from_file.add(key)
        args.file_params = set(file_param) - set(param)
        inner = {**file_param.pop("plan", {}), **param.pop("plan", {})}
        param = {**file_param, **param, **({"plan": inner} if inner else {})}
        plan = {**file_plan, **plan}
    args.param_values, args.plan_values = param, plan


def check_device(name: str):
    """``--device NAME`` as a ``torch.device``; a clear error when it does not exist or is not available here."""
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"--device {name!r} is not a torch device; give cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"--device {name}: CUDA is not available ({why}; torch {torch.__version__}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: there are {torch.cuda.device_count()} CUDA device(s), numbered from 0")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name}: only cpu, cuda and mps devices are supported")
    return dev


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


def _resolved_detector_settings(args, det, prior, op, size: int, kind: str) -> tuple[dict, dict]:
    """``(param, plan)`` for config.toml: the detector's every parameter (its defaults included) and its resolved
    sampling plan when building it again from them gives the same detector (equal ``config()``); otherwise the
    parameters and plan as given."""
    from priorshift.detectors import FromMeasurements

    given_param = {k: v for k, v in args.param_values.items() if k != "plan"}
    given_plan = {**args.param_values.get("plan", {}), **args.plan_values}
    fallback = _drop_none(_plain(given_param)), _drop_none(_plain(given_plan))
    wrapped = isinstance(det, FromMeasurements)
    base = det.image_detector if wrapped else det
    if not hasattr(base, "config"):
        return fallback
    accepted = set(_init_params(type(base))) - {"plan", "progress"}
    param = {**{k: v for k, v in base.config().items() if k in accepted}, **given_param}
    plan = given_plan
    described = getattr(getattr(base, "plan", None), "describe", None)
    if not wrapped and "plan" in _init_params(type(base)) and callable(described):
        d = described()
        plan = {**{k: v for k, v in d.items() if k != "params"}, **_sampler_defaults(d["sampler"]), **d.get("params", {})}
    param, plan = _drop_none(_plain(param)), _drop_none(_plain(plan))
    trial = argparse.Namespace(**{**vars(args), "param_values": param, "plan_values": plan, "quiet": True})
    try:
        again = _wrap_detector(trial, _build_detector(trial, prior, op, size), op, kind)
        same = _complete_plans(_plain(again.config())) == _complete_plans(_plain(det.config()))
    except (ValueError, TypeError):
        same = False
    return (param, plan) if same else fallback


def _sampler_defaults(name: str) -> dict:
    """A registered sampler's own parameters with their defaults (``None`` defaults left out)."""
    import inspect

    from priorshift.samplers.plan import _RESERVED

    fn = _sampler(name)
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and k not in _RESERVED and p.default is not inspect.Parameter.empty and p.default is not None}


def _complete_plans(cfg):
    """A detector config with each described sampling plan's parameters completed by the sampler's defaults, so
    that a plan given its defaults explicitly compares equal to one that takes them implicitly."""
    if isinstance(cfg, dict):
        out = {k: _complete_plans(v) for k, v in cfg.items()}
        if isinstance(out.get("sampler"), str) and isinstance(out.get("params"), dict):
            out["params"] = {**_plain(_sampler_defaults(out["sampler"])), **out["params"]}
        return out
    if isinstance(cfg, list):
        return [_complete_plans(v) for v in cfg]
    return cfg


def _spec_with_noise(args, det, op, size: int) -> str | None:
    """``--operator``'s spec with the operator's noise level written out (``noise_std=``) where it acts; without
    ``--operator``, the task's operator as a spec when its parameters are plain values and the spec rebuilds it."""
    spec = args.operator
    if not spec and args.task:
        from priorshift.operators.spec import operator_from_spec
        from priorshift.tasks import get_task

        task = get_task(args.task)
        if not all(isinstance(v, (bool, int, float, str)) for v in task.operator_params.values()):
            return None
        spec = task.operator + ":" + ",".join(f"{k}={v!r}" for k, v in task.operator_params.items())
        try:
            same = repr(operator_from_spec(spec, size)) == repr(op)
            _check_noise_acts(argparse.Namespace(**{**vars(args), "operator": spec}), det)
        except ValueError:
            same = False
        return spec if same else None
    if not spec or "noise_std" in _spec_keys(spec):
        return spec
    full = f"{spec}{',' if ':' in spec else ':'}noise_std={op.noise_std!r}".replace(":,", ":")
    try:
        _check_noise_acts(argparse.Namespace(**{**vars(args), "operator": full}), det)
    except ValueError:
        return spec  # with --measurements and a detector that ignores the noise level, noise= is refused
    return full


def _abs_prior(name: str) -> str:
    from priorshift.diffusion.checkpoint import bundled_priors

    return name if name in bundled_priors() else str(Path(name).expanduser().absolute())


def _score_config_toml(args, *, prior_name, prior, op, det, size, kind, n, out, config, readings) -> str:
    """The resolved configuration of a score run as a TOML document that ``score --config`` reads back."""
    import datetime
    import os
    import platform

    param, plan = _resolved_detector_settings(args, det, prior, op, size, kind)
    doc = {"task": args.task, "prior": _abs_prior(str(prior_name)), "detector": args.detector, "operator": _spec_with_noise(args, det, op, size)}
    doc.update({k: str(Path(getattr(args, k)).expanduser().absolute()) for k in ("mask", "measurements", "images", "fit") if getattr(args, k)})
    doc.update(value_range=args.value_range, seed=args.seed, batch_size=args.batch_size, device=args.device, threads=args.threads,
               out=str(out.absolute()), param=param, plan=plan)
    run = {
        "operator": repr(op), "noise_std": float(op.noise_std), "input_kind": kind, "n": n, "value_range": readings or None,
        "input_sha256": _file_digest(args.measurements or args.images), "fit_sha256": _file_digest(args.fit),
        "prior_sha256": (getattr(prior, "config", None) or {}).get("weights_sha256"), "detector": det.config() if hasattr(det, "config") else None,
        **{k: config[k] for k in ("nfe_total", "nfe_per_image", "seconds") if k in config},
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


def _scores_to_cpu(s):
    import torch

    from priorshift.types import Scores

    cpu = lambda v: v.cpu() if isinstance(v, torch.Tensor) else v  # noqa: E731
    return Scores(score=cpu(s.score), map=cpu(s.map), nfe=s.nfe, extras={k: cpu(v) for k, v in s.extras.items()})


def _cmd_score(args) -> int:
    try:
        return _score(args)
    except ValueError as e:
        # A bad value taken from --config: say so (the message names the option it stands for).
        flag = str(e).split(" ", 1)[0].split("=", 1)[0]
        key = flag[2:].replace("-", "_") if flag.startswith("--") else None
        if key and key in getattr(args, "from_file", ()) and key != "config":
            raise ValueError(f"{e} (the {key} of --config {args.config})") from None
        raise


def _score(args) -> int:
    import csv
    import shutil

    import numpy as np
    import torch

    from priorshift import load_prior
    from priorshift.detectors import score_batches
    from priorshift.io import atomic_write_json
    from priorshift.tasks import get_task

    # -- validate everything before anything is created --
    _apply_score_config(args)
    rank = 0
    if args.distributed:
        from priorshift.distributed import check_env

        rank = check_env()["rank"]
    _check_threads(args.threads)
    if args.threads:
        torch.set_num_threads(args.threads)
    if (args.measurements is None) == (args.images is None):
        raise ValueError("give exactly one of --measurements Y.npy (measured data) or --images X.npy (images to measure)")
    if int(args.batch_size) < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = check_device(args.device)
    out = Path(args.out)
    _check_out_parent(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is an existing file; give a directory")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise ValueError(f"--out {out} already holds results; pass --overwrite to replace them, or choose another directory")
    if args.recorded_run and rank == 0 and not args.quiet:
        recorded = args.recorded_run.get("input_sha256")
        if "measurements" in args.from_file or "images" in args.from_file:
            now = _file_digest(args.measurements or args.images)
            if recorded and now and now != recorded:
                print(f"priorshift score: note: {args.measurements or args.images} changed since the recorded run (sha256 {recorded}… then, "
                      f"{now}… now): the scores will differ", file=sys.stderr)
    task = get_task(args.task) if args.task else None
    prior_name = args.prior or (task.prior if task else None)
    if prior_name is None:
        raise ValueError("give --prior NAME|PATH (or --task NAME for a task's prior and settings)")
    prior = load_prior(prior_name, device=device)
    size = prior.config["unet"]["image_size"]
    if args.operator:
        from priorshift.operators.spec import operator_from_spec

        op = operator_from_spec(args.operator, size, args.mask)
    elif task:
        op = task.make_operator()
    else:
        raise ValueError("give --operator SPEC (e.g. ct:views=20,noise=0.5, inpaint:p=0.5, blur:sigma=1.5, sr:factor=2, identity:noise=0.05) or --task NAME")
    det = _build_detector(args, prior, op, size)
    readings = {}
    channels = prior.config["unet"].get("channels", 1)
    if args.images is not None:
        x, readings["input"] = _load_images(args.images, "--images", args.value_range)
        if tuple(x.shape[1:]) != (channels, size, size):
            raise ValueError(f"--images {args.images} holds {x.shape[-2]}×{x.shape[-1]} images with {x.shape[1]} channel(s); the prior "
                             f"{prior_name} takes {size}×{size} with {channels}: resize them, or use a prior of that size")
        x = x.to(device)
        data = x if det.input_kind == "images" else op(x, seed=list(range(args.seed, args.seed + x.shape[0])))
        kind = "images" if det.input_kind == "images" else "measurements"
    else:
        data, kind = _load_npy(args.measurements, "--measurements").to(device), "measurements"
    det = _wrap_detector(args, det, op, kind)
    _check_noise_acts(args, det)
    try:
        det.check_input(data)
    except ValueError as e:
        source = f"--measurements {args.measurements}" if args.images is None else f"--images {args.images} (as {kind})"
        raise ValueError(f"{source}: {e}") from None
    if kind == "measurements" and args.images is None:
        implied = tuple(op.A_adjoint(data[:1]).shape[1:])
        if implied != (channels, size, size):
            raise ValueError(f"--measurements {args.measurements} are of {implied[-2]}×{implied[-1]} images with {implied[0]} channel(s) "
                             f"under {op!r}; the prior {prior_name} takes {size}×{size} with {channels}: check --operator and --prior")
    if det.needs_fit:
        if not args.fit:
            raise ValueError(f"--detector {args.detector} is calibrated on in-distribution data: give --fit ID.npy ({det.input_kind} or images)")
        fit = _load_npy(args.fit, "--fit")
        # Images to measure (or to score, for an image detector) go through the image loader's [-1, 1] conversion.
        fit_is_images = det.input_kind == "images" or (fit.ndim == 4 and fit.shape[1:] != data.shape[1:])
        if fit_is_images or _is_integer_npy(args.fit):
            fit, readings["fit"] = _load_images(args.fit, "--fit", args.value_range)
            fit = fit.to(device)
            if det.input_kind == "measurements":
                fit = op(fit, seed=list(range(10**6 + args.seed, 10**6 + args.seed + fit.shape[0])))
        det.fit(fit.to(device), seed=args.seed)
    if not args.quiet and rank == 0:
        for what, reading in readings.items():
            print(_reading_note(f"--{'images' if what == 'input' else 'fit'}", args.images if what == "input" else args.fit, reading), file=sys.stderr)

    t0 = time.perf_counter()

    def progress(done, total):
        if not args.quiet:
            print(f"\r  scored {done}/{total} ({time.perf_counter() - t0:.0f}s)", end="" if done < total else "\n", file=sys.stderr, flush=True)

    n = data.shape[0]
    config = {"prior": str(prior_name), "operator": repr(op), "operator_spec": args.operator, "task": args.task,
              "detector": det.config() if hasattr(det, "config") else args.detector, "input": args.measurements or args.images,
              "input_kind": kind, "value_range": readings or None, "fit": args.fit, "n": n, "seed": args.seed, "batch_size": args.batch_size,
              "device": str(device)}
    if args.distributed:
        s = _score_distributed(args, det, data, config, prior, out)
        if s is None:  # not rank 0: its shard is scored; rank 0 merges and writes
            return 0
    else:
        s = score_batches(det, data, batch_size=args.batch_size, seed=args.seed, progress=progress)
    s = _scores_to_cpu(s)
    # -- write into a temporary directory, then move it into place: never a half-written or mixed run --
    from priorshift.io import atomic_directory

    with atomic_directory(out) as tmp:
        per_image = {k: v for k, v in s.extras.items() if isinstance(v, torch.Tensor) and v.shape[:1] == (n,) and v.ndim == 1 and k != "seeds"}
        with open(tmp / "scores.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["index", "score", "nfe", "seed", *per_image])
            nfe_img = s.nfe / n
            for i in range(n):
                w.writerow([i, f"{float(s.score[i]):.6g}", f"{nfe_img:.6g}", int(s.extras["seeds"][i]), *(f"{float(v[i]):.6g}" for v in per_image.values())])
        files = ["scores.csv"]
        if s.map is not None:
            np.save(tmp / "maps.npy", s.map.float().numpy())
            files.append("maps.npy")
            from priorshift.bench.figures import heatmap_figure

            k = min(8, n)
            shown = (data[:k] if kind == "images" else op.A_pinv(data[:k])).cpu()
            rec = s.extras.get("reconstruction")
            heatmap_figure(shown.float(), (rec[:k] if rec is not None else shown).float(), s.map[:k].float(), None, tmp / "heatmaps.png",
                           labels=[f"#{i}" for i in range(k)], measurement_title="x" if kind == "images" else "A⁺ y", title=repr(det))
            files.append("heatmaps.png")
        config.update({"nfe_total": s.nfe, "nfe_per_image": s.nfe / n, "seconds": round(time.perf_counter() - t0, 2),
                       "versions": {"priorshift": priorshift.__version__, "torch": torch.__version__, "python": sys.version.split()[0]}})
        atomic_write_json(tmp / "config.json", config)
        (tmp / "config.toml").write_text(_score_config_toml(args, prior_name=prior_name, prior=prior, op=op, det=det, size=size, kind=kind, n=n,
                                                            out=out, config=config, readings=readings), encoding="utf-8")
        files += ["config.json", "config.toml"]
    if args.distributed:
        from priorshift.distributed import work_dir_for

        shutil.rmtree(work_dir_for(out))  # the shards are merged into --out
    print(f"priorshift score: {n} {kind} scored with {det!r} ({s.nfe / n:.0f} NFE per image)")
    print(f"  higher = more shifted; wrote {', '.join(str(out / f) for f in files)}")
    return 0


def _score_distributed(args, det, data, config, prior, out):
    """``score --distributed`` under torchrun: every rank scores its batches into ``OUT.partial/`` (resuming an
    unfinished run of the same config), then rank 0 merges them and returns the :class:`Scores` a single-process
    run returns; other ranks return None."""
    import torch

    from priorshift import distributed as D

    device = next(iter(prior.parameters()), torch.empty(0)).device if hasattr(prior, "parameters") else torch.device("cpu")
    rank, world = D.init(device)
    if rank != 0:  # progress output on rank 0 only (KLIP's sampling-step bar)
        for d in (det, getattr(det, "image_detector", None)):
            if isinstance(getattr(d, "progress", None), bool):
                d.progress = False
    try:
        work = D.work_dir_for(out)
        run = {**config, "input_sha256": D.digest(data), "prior_sha256": prior.config.get("weights_sha256"),
               **{f"{flag}_sha256": D.digest(getattr(args, flag)) for flag in ("fit", "mask") if getattr(args, flag)},
               "versions": {"priorshift": priorshift.__version__, "torch": torch.__version__}}
        verdict = None
        if rank == 0:
            try:
                verdict = "resume" if D.prepare_work_dir(work, run, overwrite=args.overwrite) else "fresh"
            except (ValueError, OSError) as e:
                verdict = e
        verdict = D.broadcast(verdict)
        if isinstance(verdict, BaseException):
            if rank == 0:
                raise verdict
            raise SystemExit(2)  # the same failure, reported once (by rank 0)
        t0 = time.perf_counter()

        def progress(done, total):
            if rank == 0 and not args.quiet:
                print(f"\r  rank 0/{world}: scored {done}/{total} batches ({time.perf_counter() - t0:.0f}s)", end="" if done < total else "\n",
                      file=sys.stderr, flush=True)

        if rank == 0 and verdict == "resume" and not args.quiet:
            print(f"priorshift score: resuming the unfinished run in {work}", file=sys.stderr)
        scored = D.score_shard(det, data, work_dir=work, seed=args.seed, batch_size=args.batch_size, rank=rank, world=world,
                               progress=progress, keep=("reconstruction",), keep_first=8)  # what heatmaps.png shows
        if not args.quiet:
            print(f"  rank {rank}/{world}: scored {len(scored)} samples", file=sys.stderr, flush=True)
        D.barrier()
        return D.merge(work, data.shape[0]).to_scores() if rank == 0 else None
    finally:
        D.close()


def _cmd_priors(args) -> int:
    from priorshift.diffusion.checkpoint import bundled_priors

    priors = bundled_priors()
    if not priors:
        print("no bundled priors")
    for name, info in priors.items():
        print(f"{name:20s} {info.get('description', '')}")
        print(f"{'':20s} trained with: {info.get('command', '?')}")
        print(f"{'':20s} {info.get('steps', '?')} steps × batch {info.get('batch_size', '?')}, {info.get('wall_time_s', 0) / 3600:.1f} h on {info.get('hardware', '?')}; "
              f"{info.get('parameters', 0) / 1e6:.2f} M parameters")
        if info.get("note"):
            print(f"{'':20s} note: {info['note']}")
    return 0


def _cmd_datasets(args) -> int:
    from priorshift.registry import names

    print("\n".join(names("dataset")))
    return 0


def _cmd_demo(args) -> int:
    from priorshift.demo import run_demo

    return run_demo(out=args.out, quick=args.quick, n=args.n, prior=args.prior)


def _cmd_bench(args) -> int:
    import torch

    from priorshift.bench.grid import load_config, run_grid

    _check_threads(args.threads)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    out = Path(args.out) if args.out else Path("out") / Path(args.config).stem
    _check_out_parent(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is an existing file; give a directory")
    only = set(args.only.split(",")) if args.only else None
    summary = run_grid(cfg, out, only=only, cached_only=args.cached_only, log=(lambda s: None) if args.quiet else None)
    print((out / "results.md").read_text())
    print(f"priorshift bench: {len(summary)} rows; wrote {out / 'results.csv'}, {out / 'results.json'}, {out / 'results.md'}, {out / 'report.html'}")
    return 0


def _cmd_report(args) -> int:
    from priorshift.bench.report import rebuild_report

    path = rebuild_report(args.dir)
    print(f"priorshift report: wrote {path}")
    return 0


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
    add("--task", help="a named task (" + ", ".join(_task_names()) + "): its prior, operator and tuned KLIP settings as defaults (default: none)")
    add("--prior", help="bundled prior name or checkpoint path (default: the task's)")
    add("--detector", default="klip", help="a registered detector: " + ", ".join(_detector_names()) + " (default: %(default)s)")
    add("--param", action="append", default=[], metavar="K=V",
        help="a detector parameter, e.g. window=0.4,0.75 or block=4; repeatable (default: none — the detector's defaults, with --task the task's KLIP settings)")
    add("--plan", action="append", default=[], metavar="K=V",
        help="a sampling-plan field or sampler parameter, e.g. sampler=dps, steps=50, zeta=0.1, jacobian=False; repeatable "
             "(default: none — the detector's own plan, with --task the task's)")
    add("--measurements", metavar="Y.npy", help="measurements, (N, ...) as the operator produces them (default: none; give this or --images)")
    add("--images", metavar="X.npy",
        help="images (N, 1, H, W) or (N, H, W): uint8 [0, 255], or float [0, 1] / [-1, 1] (see --value-range); measured with the operator "
             "first (default: none; give this or --measurements)")
    add("--value-range", choices=VALUE_RANGE_CHOICES,
        help="how --images / --fit image files map to [-1, 1]: uint8 [0, 255], uint16, unit [0, 1] or symmetric [-1, 1] "
             "(default: by dtype and range — float data within [0, 1] is read as [0, 1], which [-1, 1] data without "
             "negative values cannot be told from; the reading used is printed and recorded in config.json)")
    add("--fit", metavar="ID.npy", help="in-distribution data for detectors that are calibrated, measurements or images (default: none)")
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="priorshift", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"priorshift {priorshift.__version__}")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser("demo", help="healthy vs lesion CT phantoms under sparse-view CT: KLIP table + heatmap (< 5 min on 2 CPU cores)")
    d.add_argument("--out", default="out/demo", help="output directory (default: out/demo)")
    d.add_argument("--quick", action="store_true", help="a smaller, faster run (for tests)")
    d.add_argument("--n", type=int, default=None, help="images per set (default 24; 4 with --quick)")
    d.add_argument("--prior", default=None, help="a 64×64 CT prior: bundled name or checkpoint path (default: the ct task's, phantom-ct-64)")
    d.set_defaults(func=_cmd_demo)

    t = sub.add_parser("train", help="train a small diffusion prior (EDM loss) on a dataset; resumable")
    t.add_argument("--data", required=True, help="dataset: phantom-ct, fashion-mnist, mnist, folder:PATH, npy:PATH")
    t.add_argument("--image-size", type=int, required=True)
    t.add_argument("--steps", type=int, required=True)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--out", required=True, help="run directory (checkpoints, the prior, the sample grid)")
    t.add_argument("--name", default=None, help="prior name (default: the run directory's name)")
    t.add_argument("--widths", default=None, help="UNet channels per level, finest first (default 16,32,64,128; with --init: the prior's)")
    t.add_argument("--init", default=None, metavar="PRIOR",
                   help="fine-tune: start from this prior's weights (bundled name or path; its architecture is used)")
    t.add_argument("--no-attention", action="store_true", help="no self-attention at the lowest resolution")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--train-size", type=int, default=None, help="number of training images (procedural data: how many to generate)")
    t.add_argument("--data-seed", type=int, default=0)
    t.add_argument("--value-range", default=None, choices=["uint8", "uint16", "unit", "symmetric"],
                   help="npy:PATH data: how values map to [-1, 1] (default: by dtype and range; float data within [0, 1] is read "
                        "as [0, 1] — [-1, 1] data without negative values cannot be told from it; the reading is printed)")
    t.add_argument("--checkpoint-every", type=int, default=250)
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    t.add_argument("--no-grid", dest="grid", action="store_false", help="skip the sample grid PNG at the end")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=_cmd_train)

    sc = sub.add_parser("score", help="score measurements (or images) with any registered detector: scores.csv, maps.npy, heatmaps.png, "
                        "config.json, config.toml (rerun it with --config)")
    _add_score_arguments(sc)
    sc.set_defaults(func=_cmd_score)

    be = sub.add_parser("bench", help="run a benchmark grid (detectors × measurement domains) from a TOML config: results table + report.html",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    be.add_argument("config", help="a bench config, e.g. benchmarks/configs/ood-fmnist-mnist.toml (format: priorshift.bench.grid)")
    be.add_argument("--out", default=None, help="results folder (default: out/<config name>); each row's scores are cached in OUT/scores")
    be.add_argument("--only", default=None, metavar="ROWS", help="comma-separated row keys (detector@domain[#label]) to score again")
    be.add_argument("--cached-only", action="store_true", help="score nothing: tabulate the cached rows and list the others as not run")
    be.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    be.add_argument("--quiet", action="store_true", help="no progress output")
    be.set_defaults(func=_cmd_bench)

    rp = sub.add_parser("report", help="(re)build report.html in a results folder (a bench grid or a score run) from its saved scores")
    rp.add_argument("dir", help="the results folder")
    rp.set_defaults(func=_cmd_report)

    from priorshift.adapt import add_parser as add_adapt_parser

    add_adapt_parser(sub)

    pr = sub.add_parser("priors", help="list the bundled priors and how each was trained")
    pr.set_defaults(func=_cmd_priors)
    ds = sub.add_parser("datasets", help="list the dataset names")
    ds.set_defaults(func=_cmd_datasets)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as e:  # bad input, a missing / unreadable file: one line that says what to fix
        if args.debug:
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"priorshift {args.command}: error: {message}", file=sys.stderr)
        return 2
