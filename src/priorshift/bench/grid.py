"""The benchmark grid behind ``priorshift bench CONFIG.toml``: detectors × measurement domains on one ID/OOD
pair → a tidy results table (CSV + JSON), ``results.md`` and ``report.html``.

A config names the prior, the data (ID, OOD and the ID calibration set for detectors that are fitted), the
measurement domains (operator specs or tasks) and the rows::

    title = "Fashion-MNIST vs MNIST"
    prior = "fashion-mnist-32"
    n = 48                      # ID and OOD images each
    n_fit = 48                  # calibration images
    [data]
    id  = { dataset = "fashion-mnist", split = "test", start = 0 }
    ood = { dataset = "mnist", split = "test", start = 0 }
    fit = { dataset = "fashion-mnist", split = "test", start = 5000 }
    # optional on any entry: shift = "jigsaw:tile=8" (a structure-only shift, priorshift.data.shifts, seeded per
    # image by its dataset index); match_energy = { dataset = ..., split = ..., start = ..., n = 256 } (the entry's
    # images energy-matched to that reference set under each domain's operator — identity for "images" —
    # with priorshift.data.match_energy, before measuring)
    [domains]
    identity = "identity:noise=0.02"        # an operator spec (priorshift.operators.spec)
    fmnist-inpaint = "task:fmnist-inpaint"  # a task's operator (priorshift.tasks)
    [reconstruction]                        # image detectors on measurements: posterior mean first
    plan = { sampler = "dps", steps = 50, jacobian = false }
    zeta = { fmnist-inpaint = 0.6 }         # per-domain overrides of the plan's ζ
    [[rows]]
    detector = "klip"
    domain = "identity"                     # or "images": the clean images themselves
    params = { samples = 2, plan = { steps = 50 } }
    chosen = "library defaults"             # how the settings were chosen (printed in the table; default: library
                                            # defaults / task settings / the config's params, by what the row sets)
    label = ""                              # tells apart two rows of one detector and domain

Everything is checked before the first row is scored: the entries' types (each error names the key and the file),
the detectors' names, every row's detector built with its parameters and plan, the domains' specs. Each row's
scores are cached in ``OUT/scores/<row>.json`` (delete one to rescore it); the cache is keyed by the
row's full definition, so an edited row is scored again. Seeds are fixed per set (ID, OOD, calibration) and
measurement noise per domain, so rows are paired: every detector sees the same measurements.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from priorshift.io import atomic_write, atomic_write_json
from priorshift.operators.spec import parse_spec
from priorshift.tasks import get_task

__all__ = ["load_config", "run_grid", "row_key"]

SEEDS = {"id": 10_000, "ood": 20_000, "fit": 30_000}
SCORE_SEEDS = {"id": 60_000, "ood": 70_000, "fit": 50_000}
SHIFT_SEED, MATCH_SEED = 80_000, 90_000
ALPHA = 0.05  # the level of the power column


def load_config(path: str | Path) -> dict:
    """Read and validate a bench config (TOML)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"bench config {path} does not exist")
    try:
        cfg = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"bench config {path} is not valid TOML: {e}") from None
    for key in ("prior", "data", "rows"):
        if key not in cfg:
            raise ValueError(f"bench config {path} needs a '{key}' entry")
    _check_types(cfg, path)
    for key in ("id", "ood"):
        if key not in cfg["data"]:
            raise ValueError(f"bench config {path}: [data] needs '{key}' = {{ dataset = ..., split = ..., start = ... }}")
    for key, entry in cfg["data"].items():
        where = f"[data] {key} in bench config {path}"
        if not isinstance(entry, dict) or not isinstance(entry.get("dataset"), str):
            raise ValueError(f"{where} must be a table with a dataset name: {{ dataset = ..., split = ..., start = ... }}, got {entry!r}")
        start = entry.get("start", 0)
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(f"start of {where} must be an integer >= 0, got {start!r}")
        if not isinstance(entry.get("split", "test"), str):
            raise ValueError(f"split of {where} must be a string (train or test), got {entry['split']!r}")
        _check_transforms(entry, where)
    domains = cfg.get("domains", {})
    from priorshift.registry import names

    detectors = names("detector")
    for i, row in enumerate(cfg["rows"]):
        if not isinstance(row, dict) or "detector" not in row or "domain" not in row:
            raise ValueError(f"bench config {path}: row {i} needs 'detector' and 'domain'")
        if row["detector"] not in detectors:
            raise ValueError(f"bench config {path}: row {i} names detector {row['detector']!r}, which is not registered; choose one of "
                             f"{', '.join(detectors)}")
        if row["domain"] != "images" and row["domain"] not in domains:
            raise ValueError(f"bench config {path}: row {i} uses domain {row['domain']!r}, which [domains] does not define ({', '.join(domains) or 'none'})")
        if not isinstance(row.setdefault("params", {}), dict):
            raise ValueError(f"bench config {path}: row {i}: params must be a table, got {row['params']!r}")
        row.setdefault("chosen", _chosen_by(row, domains))
        row.setdefault("label", "")
    cfg.setdefault("n", 48)
    cfg.setdefault("n_fit", cfg["n"])
    cfg.setdefault("batch_size", 16)
    cfg.setdefault("title", path.stem)
    for key in ("n", "n_fit", "batch_size"):
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} in bench config {path} must be an integer >= 1, got {value!r}")
    for name, spec in domains.items():
        if not isinstance(spec, str):
            raise ValueError(f"bench config {path}: [domains] {name} must be an operator spec or task:NAME string, got {spec!r}")
        try:
            get_task(spec[5:]) if spec.startswith("task:") else parse_spec(spec)
        except ValueError as e:
            raise ValueError(f"bench config {path}: [domains] {name}: {e}") from None
    cfg["_path"] = str(path)
    return cfg


def _check_types(cfg: dict, path: Path) -> None:
    """The top-level entries' types, each failure naming the key and the file."""
    kinds = {"prior": (str, "a string"), "data": (dict, "a table"), "rows": (list, "an array of tables ([[rows]])"),
             "domains": (dict, "a table"), "reconstruction": (dict, "a table"), "title": (str, "a string"), "description": (str, "a string")}
    for key, (kind, text) in kinds.items():
        if key in cfg and not isinstance(cfg[key], kind):
            raise ValueError(f"{key} in bench config {path} must be {text}, got {cfg[key]!r}")


def _check_transforms(entry: dict, where: str) -> None:
    """A data entry's optional ``shift`` (a structure-only shift spec) and ``match_energy`` (a reference set)."""
    from priorshift.data.shifts import SHIFTS

    shift = entry.get("shift")
    if shift is not None and (not isinstance(shift, str) or shift.partition(":")[0] not in SHIFTS):
        raise ValueError(f"shift of {where} must be a shift spec NAME[:key=value,...] with NAME one of {', '.join(SHIFTS)}, got {shift!r}")
    ref = entry.get("match_energy")
    if ref is not None:
        n = ref.get("n") if isinstance(ref, dict) else None
        if not isinstance(ref, dict) or not isinstance(ref.get("dataset"), str) or isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ValueError(f"match_energy of {where} must be a reference set {{ dataset = ..., split = ..., start = ..., n = >= 2 }}, got {ref!r}")


def _chosen_by(row: dict, domains: dict) -> str:
    """How a row's settings were chosen, when the row does not say: the library's defaults, a task's settings, and/or
    the parameters the config sets."""
    task = str(domains.get(row.get("domain"), "")).startswith("task:")
    if row.get("params"):
        return "task settings + the config's params" if task else "the config's params"
    return "task settings" if task else "library defaults"


def row_key(row: dict) -> str:
    """``detector@domain`` (``#label`` when the row has one): the row's name in tables and cache files."""
    label = row.get("label") or ""
    return f"{row['detector']}@{row['domain']}" + (f"#{label.replace(' ', '_').replace('×', 'x')}" if label else "")


def _operator(spec: str, image_size: int):
    if spec.startswith("task:"):
        from priorshift.tasks import get_task

        return get_task(spec[5:]).make_operator()
    from priorshift.operators.spec import operator_from_spec

    return operator_from_spec(spec, image_size)


def _images(entry: dict, n: int, image_size: int):
    from priorshift.data import load_dataset

    start = int(entry.get("start", 0))
    x = load_dataset(entry["dataset"], split=entry.get("split", "test"), n=start + n, image_size=image_size)
    if x.shape[0] < start + n:
        raise ValueError(f"dataset {entry['dataset']!r} has {x.shape[0]} images; the config asks for {n} from index {start}")
    x = x[start : start + n]
    if entry.get("shift"):
        from priorshift.data.shifts import apply_shift

        x = apply_shift(x, entry["shift"], seed=[SHIFT_SEED + start + i for i in range(n)])
    return x


def _domain_task(cfg: dict, domain: str):
    """The task of a ``task:NAME`` domain, else ``None``."""
    spec = cfg.get("domains", {}).get(domain, "")
    if not spec.startswith("task:"):
        return None
    from priorshift.tasks import get_task

    return get_task(spec[5:])


def _detector(row: dict, prior, operators: dict, cfg: dict):
    """The row's detector (:func:`priorshift.tasks.make_detector`): a task domain's settings under the row's
    ``params``; an image detector on measurements reconstructs with [reconstruction] ``plan`` (and the domain's
    ``zeta``) over the task's plan — without a task, by default DPS, 50 steps, no Jacobian."""
    from priorshift.tasks import make_detector

    domain, task = row["domain"], _domain_task(cfg, row["domain"])
    recon = cfg.get("reconstruction", {})
    plan = dict(recon.get("plan", {} if task else {"sampler": "dps", "steps": 50, "jacobian": False}))
    if domain in recon.get("zeta", {}):
        plan["zeta"] = recon["zeta"][domain]
    key = row_key(row)
    try:
        return make_detector(row["detector"], prior, operators.get(domain), task=task, params=row["params"], reconstruction=plan,
                             inputs="images" if domain == "images" else "measurements", label=f"row {key}: detector {row['detector']!r}",
                             source=lambda k: f"row {key}: params.{k}")
    except ValueError as e:
        if str(e).startswith("row "):
            raise
        raise ValueError(f"row {key} of bench config {cfg['_path']} (its params, or [reconstruction]): {e}") from None


def _row_definition(row: dict, cfg: dict) -> dict:
    """What a row's cached scores are keyed by: its detector, domain, label and parameters — with a task domain's
    settings for the detector under them (they are part of the row)."""
    definition = {k: row[k] for k in ("detector", "domain", "params", "label")}
    task = _domain_task(cfg, row["domain"])
    if task is not None:
        definition["params"] = json.loads(json.dumps(task.settings_under(row["detector"], row["params"])))
    return definition


def run_grid(cfg: dict, out: str | Path, *, only: set[str] | None = None, cached_only: bool = False, log: Callable[[str], None] | None = None) -> dict:
    """Score every row of ``cfg`` (cached), write ``results.csv``, ``results.json``, ``results.md`` and
    ``report.html`` under ``out``; returns ``{row key: metrics}``. ``cached_only``: score nothing, tabulate the
    rows already cached and list the others as not run."""
    from priorshift import load_prior
    from priorshift.bench.report import comparison_report
    from priorshift.calibrate import conformal_pvalues
    from priorshift.detectors import score_batches
    from priorshift.metrics import auroc_standard_error, ood_metrics

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    out = Path(out)
    prior = load_prior(cfg["prior"])
    size = getattr(prior, "image_size", None)
    n, n_fit = int(cfg["n"]), int(cfg["n_fit"])
    images = {"id": _images(cfg["data"]["id"], n, size), "ood": _images(cfg["data"]["ood"], n, size)}
    if "fit" in cfg["data"]:
        images["fit"] = _images(cfg["data"]["fit"], n_fit, size)
    operators = {name: _operator(spec, size) for name, spec in cfg.get("domains", {}).items()}
    measured: dict = {}
    references = {which: _images(cfg["data"][which]["match_energy"], cfg["data"][which]["match_energy"]["n"], size)
                  for which in images if cfg["data"][which].get("match_energy")}

    def matched(domain: str, which: str):
        """The set's images, energy-matched under the domain's operator where its entry asks for it."""
        if which not in references:
            return images[which]
        if ("matched", domain, which) not in measured:
            from priorshift.data.shifts import match_energy
            from priorshift.operators.spec import operator_from_spec

            op = operator_from_spec("identity", size) if domain == "images" else operators[domain]
            measured["matched", domain, which] = match_energy(images[which], references[which], operator=op, seed=MATCH_SEED)
        return measured["matched", domain, which]

    def data(domain: str, which: str):
        if which not in images:
            raise ValueError(f"a fitted detector needs calibration data: add [data] fit = {{ ... }} to {cfg['_path']}")
        if domain == "images":
            return matched(domain, which)
        if (domain, which) not in measured:
            x = matched(domain, which)
            measured[domain, which] = operators[domain](x, seed=list(range(SEEDS[which], SEEDS[which] + x.shape[0])))
        return measured[domain, which]

    # Every row to score is built (its detector, parameters and plan checked) before the first one is scored.
    todo: dict[str, tuple] = {}
    results: dict[str, dict] = {}
    for row in cfg["rows"]:
        key = row_key(row)
        path = out / "scores" / f"{key.replace('@', '__').replace('#', '__')}.json"
        definition = _row_definition(row, cfg)
        cached = json.loads(path.read_text()) if path.exists() else None
        fresh = cached is not None and cached.get("definition", definition) == definition and len(cached["scores_id"]) == n
        if fresh and (only is None or key not in only):
            results[key] = {**cached, "chosen": row["chosen"]}
            continue
        if (only is not None and key not in only) or cached_only:
            continue
        det = _detector(row, prior, operators, cfg)
        if det.needs_fit and "fit" not in images:
            raise ValueError(f"row {key}: {row['detector']} is fitted on calibration data: add [data] fit = {{ ... }} to {cfg['_path']}")
        todo[key] = (row, path, definition, det)
    (out / "scores").mkdir(parents=True, exist_ok=True)
    for key, (row, path, definition, det) in todo.items():
        t0 = time.perf_counter()
        if det.needs_fit:
            det.fit(data(row["domain"], "fit"), seed=SCORE_SEEDS["fit"])
        t_fit = time.perf_counter() - t0

        def progress(label):
            def show(done, total):
                log(f"  {key} {label}: {done}/{total} ({time.perf_counter() - t0:.0f}s)")
            return show

        t1 = time.perf_counter()
        s_id = score_batches(det, data(row["domain"], "id"), batch_size=cfg["batch_size"], seed=SCORE_SEEDS["id"], progress=progress("ID"))
        s_ood = score_batches(det, data(row["domain"], "ood"), batch_size=cfg["batch_size"], seed=SCORE_SEEDS["ood"], progress=progress("OOD"))
        seconds = time.perf_counter() - t1
        res = {**row, "definition": definition, "key": key, "setting": repr(det),
               "scores_id": s_id.score.double().tolist(), "scores_ood": s_ood.score.double().tolist(),
               "nfe_per_image": (s_id.nfe + s_ood.nfe) / (2 * n), "seconds_per_image": seconds / (2 * n), "fit_seconds": t_fit,
               "distance": s_id.extras.get("distance")}
        atomic_write_json(path, res)
        results[key] = res
    results = {row_key(r): results[row_key(r)] for r in cfg["rows"] if row_key(r) in results}  # in the config's order

    summary, table = {}, []
    for key, r in results.items():
        m = ood_metrics(r["scores_id"], r["scores_ood"])
        se = auroc_standard_error(m["auroc"], m["n_id"], m["n_ood"])
        # conformal p-values of the OOD scores with the row's n ID scores as the calibration set (priorshift.calibrate)
        power = float((conformal_pvalues(r["scores_id"], r["scores_ood"]) <= ALPHA).double().mean())
        summary[key] = {"detector": r["detector"], "domain": r["domain"], "label": r.get("label", ""), **m, "auroc_se": se, "power_05": power,
                        "nfe_per_image": r["nfe_per_image"], "seconds_per_image": r["seconds_per_image"], "setting": r["setting"], "chosen": r["chosen"],
                        "distance": r.get("distance")}
        table.append(summary[key])
    _write_csv(out / "results.csv", table)
    atomic_write_json(out / "results.json", summary)
    missing = [row_key(r) for r in cfg["rows"] if row_key(r) not in results]
    md = _markdown(cfg, table, missing, out)
    atomic_write(out / "results.md", lambda tmp: Path(tmp).write_text(md))
    comparison_report(out, results, title=cfg["title"], intro=cfg.get("description", ""), config={k: v for k, v in cfg.items() if not k.startswith("_")})
    return summary


def _write_csv(path: Path, table: list[dict]) -> None:
    cols = ["detector", "domain", "label", "auroc", "auroc_se", "power_05", "fpr95_ood_positive", "fpr95_id_positive", "aupr_in", "aupr_out",
            "n_id", "n_ood", "nfe_per_image", "seconds_per_image", "distance", "chosen", "setting"]

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            w.writerows(table)

    atomic_write(path, write)


def _markdown(cfg: dict, table: list[dict], missing: list[str] = (), out: Path | None = None) -> str:
    import platform

    lines = [f"# {cfg['title']}", ""]
    if cfg.get("description"):
        lines += [cfg["description"], ""]
    lines += [f"| detector | domain | AUROC | FPR@95 (OOD+) | power at α = {ALPHA} | AUPR-in | AUPR-out | NFE / image | s / image | settings chosen by |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in table:
        name = r["detector"] + (f" ({r['distance']})" if r.get("distance") else "") + (f" [{r['label']}]" if r.get("label") else "")
        lines.append(f"| {name} | {r['domain']} | {r['auroc']:.3f} ± {r['auroc_se']:.3f} | {r['fpr95_ood_positive']:.3f} | {r['power_05']:.3f} | {r['aupr_in']:.3f} | "
                     f"{r['aupr_out']:.3f} | {r['nfe_per_image']:.0f} | {r['seconds_per_image']:.2f} | {r['chosen']} |")
    n_id = table[0]["n_id"] if table else 0
    lines += ["", f"Power at α = {ALPHA}: the fraction of OOD items with conformal p-value (1 + #{{ID scores ≥ s}}) / (n + 1) ≤ {ALPHA}, "
              f"calibrated on the row's {n_id} ID scores (priorshift.calibrate.conformal_pvalues; smallest p 1/(n + 1))."]
    if missing:
        lines += ["", f"Not run (no cached scores): {', '.join(missing)}."]
    lines += ["", f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}.", "",
              f"Command: `priorshift bench {cfg['_path']}" + (f" --out {out}`" if out is not None else "`")]
    return "\n".join(lines) + "\n"
