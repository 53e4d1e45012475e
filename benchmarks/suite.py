"""The shift suite (issue 21): benchmarks a statistic of the measurements' size cannot pass, one summary table.

Each cell is a ``priorshift bench`` config, ``benchmarks/configs/suite-*.toml``, written from ``CELLS`` below
(``python benchmarks/suite.py configs``); ``run`` scores every cell with ``priorshift.bench.grid`` and writes
``OUT/<cell>/`` (results.md/csv/json, report.html) and ``OUT/summary.md`` + ``summary.json``:

    python benchmarks/suite.py configs                                      # (re)write benchmarks/configs/suite-*.toml
    python benchmarks/suite.py run --out benchmarks/results/suite --threads 1
    python benchmarks/suite.py run --quick --out out/suite-quick            # n = 8 + 8, 20 steps: CI-size, not accuracy

Families: **energy-matched** dataset pairs (the OOD images rescaled by ``priorshift.data.match_energy`` so that
``‖A x‖²`` is distributed as on in-distribution images, under each domain's operator) beside the **raw** pair;
**near-OOD** (held-out classes with the sibling prior ``fashion-mnist-0-7-32``; ``mnist-32`` vs Fashion-MNIST);
**structure-only** shifts (``priorshift.data.shifts``: each image's pixel histogram exactly unchanged).

Rows: the trivial baselines (no prior, 0 NFE: ``measurement-norm`` two-sided and one-sided — the latter ranks
exactly as ``‖y‖²`` —, ``residual``), the classical diffusion baselines (``denoising-error``, ``score-norm``), LMD
(4 attempts × 25 steps, for cost), KLIP (library defaults, or the ``fmnist-blur`` task's window where that domain is
the task — chosen with the sibling prior on held-out classes, never on MNIST) and multiscale KLIP (defaults). ΠGDM
at 50 steps and S = 2 posterior samples instead of the defaults' 100 and 4, for cost. Nothing is tuned on any
cell's OOD set; the near-OOD held-out-class cell uses no task setting at all (those were tuned on other images of
the same held-out classes) and images disjoint from that tuning split.

Summary, per cell and measurement domain: the best detector that uses the prior and the best trivial baseline
(by AUROC), and the gap with SE ``sqrt(SE₁² + SE₂²)`` (conservative: both are scored on the same items, whose positive
correlation would shrink it). Picking the best of several rows on the evaluation set flatters it: read the best
AUROC as an upper estimate.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "benchmarks" / "configs"
N, N_FIT, N_REF = 48, 48, 500
PLAN = {"steps": 50}
TRIVIAL = ("measurement-norm", "residual")

IDENTITY, INPAINT50 = "identity:noise=0.02", "inpaint:p=0.5,noise=0.02,seed=0"
BLUR = "blur:kernel_size=7,sigma=1.5,noise=0.02"  # the fmnist-blur task's operator, without its settings

FM = {"dataset": "fashion-mnist", "split": "test"}
MN = {"dataset": "mnist", "split": "test"}


def _image_rows_on(domain: str) -> list[dict]:
    """The image detectors through measurements (DPS posterior mean, 50 steps, ζ 0.3, then the detector)."""
    recon = "; reconstruction DPS 50 steps, ζ 0.3 (the bench default)"
    return [{"detector": "score-norm", "domain": domain, "chosen": "library defaults" + recon},
            {"detector": "lmd", "domain": domain, "params": {"attempts": 4, "plan": {"steps": 25}}, "label": "4×25",
             "chosen": "defaults but 4 attempts × 25 steps (cost)" + recon}]


def _rows(domains: dict, *, task_blur: bool) -> list[dict]:
    """Every row the CPU affords on ``domains`` (name → spec), plus the image-domain rows; the identity domain's trivial
    rows always (on clean images, ‖x‖² is the trivial baseline)."""
    rows = []
    if "identity" not in domains:
        rows += [{"detector": "measurement-norm", "domain": "identity", "chosen": "none to choose (fitted on ID only)"},
                 {"detector": "measurement-norm", "domain": "identity", "params": {"side": "upper"}, "label": "one-sided",
                  "chosen": "none to choose: one-sided, ranks exactly as ‖y‖²"}]
    for d in domains:
        rows += [{"detector": "measurement-norm", "domain": d, "chosen": "none to choose (fitted on ID only)"},
                 {"detector": "measurement-norm", "domain": d, "params": {"side": "upper"}, "label": "one-sided",
                  "chosen": "none to choose: one-sided, ranks exactly as ‖y‖²"}]
        if d != "identity":
            rows.append({"detector": "residual", "domain": d, "chosen": "library defaults"})
    rows += [{"detector": "denoising-error", "domain": "images", "chosen": "library defaults"},
             {"detector": "score-norm", "domain": "images", "chosen": "library defaults"},
             {"detector": "lmd", "domain": "images", "params": {"attempts": 4, "plan": {"steps": 25}}, "label": "4×25",
              "chosen": "defaults but 4 attempts × 25 steps (cost)"}]
    for d, spec in domains.items():
        task = spec.startswith("task:")
        rows.append({"detector": "klip", "domain": d, "params": {"plan": dict(PLAN), "samples": 2},
                     "chosen": ("the fmnist-blur task: window (0.35, 0.45), 16 px, chosen with fashion-mnist-0-7-32 on held-out classes"
                                if task else "library defaults: ΠGDM, window (0.65, 0.85), 8 px") + " (steps 100 → 50, S 4 → 2 for cost)"})
        rows.append({"detector": "klip-multiscale", "domain": d, "params": {"plan": dict(PLAN), "samples": 2},
                     "chosen": "library defaults: 5 windows, 8 px, z-scored on the fit set (steps 100 → 50, S 4 → 2 for cost)"})
    assert task_blur or not any(s.startswith("task:") for s in domains.values())
    return rows


def _cell(name, family, title, description, prior, data, domains, *, task_blur=False, rows=None) -> dict:
    rows = rows or _rows(domains, task_blur=task_blur)
    return {"name": name, "family": family, "title": title, "description": description, "prior": prior, "n": N, "n_fit": N_FIT,
            "batch_size": 16, "data": data, "domains": {"identity": IDENTITY, **domains}, "rows": rows}


_COMMON = (f"{N} + {N} images, ID-fitted detectors fitted on {N_FIT} other ID images; σ_y = 0.02; ΠGDM 50 steps, S = 2 for the KLIP rows. "
           "OOD = positive class; AUROC ± Hanley–McNeil SE; FPR@95 with OOD positive; power: conformal p ≤ 0.05 against the row's ID scores. "
           "Nothing was tuned on this cell's OOD set.")
_PAIR_DOMAINS = {"identity": IDENTITY, "fmnist-blur": "task:fmnist-blur", "inpaint50": INPAINT50}
_MATCH_FM = {**FM, "start": 7000, "n": N_REF}


def _structure(shift: str, why: str) -> dict:
    name = shift.split(":")[0]
    return _cell(f"suite-structure-{name}", "structure-only", f"Structure-only shift: Fashion-MNIST vs {shift} Fashion-MNIST",
                 f"Prior fashion-mnist-32. ID: Fashion-MNIST test [0, {N}); OOD: Fashion-MNIST test [2000, {2000 + N}) under "
                 f"`{shift}` (priorshift.data.shifts; each image's pixel histogram exactly unchanged). {why} " + _COMMON,
                 "fashion-mnist-32", {"id": {**FM, "start": 0}, "ood": {**FM, "start": 2000, "shift": shift}, "fit": {**FM, "start": 5000}},
                 {"identity": IDENTITY})


CELLS = [
    _cell("suite-fmnist-mnist-raw", "dataset pair, raw", "Fashion-MNIST vs MNIST, raw",
          f"Prior fashion-mnist-32. ID: Fashion-MNIST test [0, {N}); OOD: MNIST test [0, {N}) as they come; fit: Fashion-MNIST test "
          f"[5000, {5000 + N_FIT}). " + _COMMON, "fashion-mnist-32",
          {"id": {**FM, "start": 0}, "ood": {**MN, "start": 0}, "fit": {**FM, "start": 5000}}, _PAIR_DOMAINS, task_blur=True,
          rows=_rows(_PAIR_DOMAINS, task_blur=True) + _image_rows_on("inpaint50")),
    _cell("suite-fmnist-mnist-matched", "dataset pair, energy-matched", "Fashion-MNIST vs MNIST, energy-matched",
          f"Prior fashion-mnist-32. ID: Fashion-MNIST test [0, {N}); OOD: MNIST test [0, {N}), each digit's intensities mapped by "
          f"priorshift.data.match_energy so that ‖A x‖² under the domain's operator (identity for images) follows the quantiles of "
          f"{N_REF} reference garments (Fashion-MNIST test [7000, {7000 + N_REF}), disjoint from ID and fit); fit: Fashion-MNIST test "
          f"[5000, {5000 + N_FIT}). " + _COMMON, "fashion-mnist-32",
          {"id": {**FM, "start": 0}, "ood": {**MN, "start": 0, "match_energy": _MATCH_FM}, "fit": {**FM, "start": 5000}},
          _PAIR_DOMAINS, task_blur=True, rows=_rows(_PAIR_DOMAINS, task_blur=True) + _image_rows_on("inpaint50")),
    _cell("suite-nearood-fmnist-0-7", "near-OOD, held-out classes", "Held-out classes: fashion-mnist-0-7-32, classes 0-7 vs bags and ankle boots",
          f"Prior fashion-mnist-0-7-32 (trained without classes 8-9). ID: Fashion-MNIST test classes 0-7 [500, {500 + N}); OOD: classes 8-9 "
          f"[500, {500 + N}) (the tasks' held-out-class tuning used the first 96 of each, so these are disjoint; no task setting is used "
          f"here); fit: classes 0-7 [2000, {2000 + N_FIT}). " + _COMMON, "fashion-mnist-0-7-32",
          {"id": {"dataset": "fashion-mnist:classes=0-7", "split": "test", "start": 500},
           "ood": {"dataset": "fashion-mnist:classes=8-9", "split": "test", "start": 500},
           "fit": {"dataset": "fashion-mnist:classes=0-7", "split": "test", "start": 2000}},
          {"blur": BLUR, "inpaint50": INPAINT50}),
    _cell("suite-nearood-mnist-fmnist", "dataset pair, raw (other way round)", "mnist-32: MNIST vs Fashion-MNIST, raw",
          f"Prior mnist-32. ID: MNIST test [0, {N}); OOD: Fashion-MNIST test [0, {N}); fit: MNIST test [500, {500 + N_FIT}). " + _COMMON,
          "mnist-32", {"id": {**MN, "start": 0}, "ood": {**FM, "start": 0}, "fit": {**MN, "start": 500}},
          {"blur": BLUR, "inpaint50": INPAINT50}),
    _cell("suite-nearood-mnist-fmnist-matched", "dataset pair, energy-matched (other way round)", "mnist-32: MNIST vs Fashion-MNIST, energy-matched",
          f"Prior mnist-32. ID: MNIST test [0, {N}); OOD: Fashion-MNIST test [0, {N}) energy-matched (priorshift.data.match_energy) to "
          f"MNIST test [600, 1000) ({400} reference digits, disjoint from ID and fit); fit: MNIST test [500, {500 + N_FIT}). " + _COMMON,
          "mnist-32", {"id": {**MN, "start": 0}, "ood": {**FM, "start": 0, "match_energy": {**MN, "start": 600, "n": 400}},
                       "fit": {**MN, "start": 500}},
          {"blur": BLUR, "inpaint50": INPAINT50}),
    _structure("tile-shuffle:tile=4", "Pixels shuffled inside each 4×4 tile: a block-codec or reader bug (wrong order within macroblocks)."),
    _structure("jigsaw:tile=8", "The 16 tiles of 8×8 px permuted: a mis-stitched mosaic (tiles reassembled in the wrong order)."),
    _structure("flip:axis=vertical", "Garments upside down: an image-origin convention mixed up at the data boundary."),
]
NAMES = [c["name"] for c in CELLS]


# ---- TOML (the subset the configs use) -------------------------------------------------------------------------
def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {v!r} as TOML")


def _key(k: str) -> str:
    return k if all(c.isalnum() or c in "-_" for c in k) else json.dumps(k)


def to_toml(cell: dict) -> str:
    head = [f"# {cell['title']} — one cell of the shift suite (issue 21), family: {cell['family']}.",
            "# Written by `python benchmarks/suite.py configs` from its CELLS (edit there); run the whole suite with",
            "#   python benchmarks/suite.py run --out benchmarks/results/suite --threads 1",
            f"# or this cell alone: priorshift bench benchmarks/configs/{cell['name']}.toml --out benchmarks/results/suite/{cell['name']}"]
    lines = head + [f"{k} = {_value(cell[k])}" for k in ("title", "description", "prior", "n", "n_fit", "batch_size")]
    lines += ["", "[data]"] + [f"{k} = {_value(v)}" for k, v in cell["data"].items()]
    lines += ["", "[domains]"] + [f"{_key(k)} = {_value(v)}" for k, v in cell["domains"].items()]
    for row in cell["rows"]:
        lines += ["", "[[rows]]"] + [f"{k} = {_value(v)}" for k, v in row.items()]
    return "\n".join(lines) + "\n"


def write_configs() -> list[Path]:
    out = []
    for cell in CELLS:
        path = CONFIGS / f"{cell['name']}.toml"
        path.write_text(to_toml(cell), encoding="utf-8")
        out.append(path)
    return out


def quick_cell(cell: dict) -> dict:
    """CI-size: 8 + 8 images, 20 sampler steps (the task window needs a step), LMD 2 attempts."""
    c = copy.deepcopy(cell)
    c["n"] = c["n_fit"] = 8
    c["batch_size"] = 8
    for row in c["rows"]:
        plan = row.get("params", {}).get("plan")
        if plan is not None:
            plan["steps"] = 20
        if row["detector"] == "lmd":
            row["params"]["attempts"] = 2
    for entry in c["data"].values():
        if "match_energy" in entry:
            entry["match_energy"]["n"] = 64
    return c


# ---- summary ---------------------------------------------------------------------------------------------------
def summarise(cells: list[dict], results: dict) -> tuple[list[dict], str]:
    """Per cell and domain: the best prior-using detector, the best trivial baseline, the gap ± SE."""
    table = []
    for cell in cells:
        summary = results[cell["name"]]
        for domain in [*cell["domains"], "images"]:  # a domain with only trivial rows is no row of the summary
            here = [r for r in summary.values() if r["domain"] == domain]
            det = [r for r in here if r["detector"] not in TRIVIAL]
            triv = [r for r in here if r["detector"] in TRIVIAL]
            if domain == "images":  # the clean-image rows compete with the identity domain's trivial baselines
                triv = [r for r in summary.values() if r["domain"] == "identity" and r["detector"] in TRIVIAL]
            if not det:
                continue
            best = max(det, key=lambda r: r["auroc"])
            row = {"cell": cell["name"], "family": cell["family"], "domain": domain, "n": best["n_id"],
                   "best": best, "trivial": max(triv, key=lambda r: r["auroc"]) if triv else None}
            if row["trivial"] is not None:
                row["gap"] = best["auroc"] - row["trivial"]["auroc"]
                row["gap_se"] = math.hypot(best["auroc_se"], row["trivial"]["auroc_se"])
            table.append(row)
    return table, render(table)


def headline(cells: list[dict], results: dict) -> str:
    """One row per cell (the README's table): the best prior-using row and the best trivial row over all its domains."""
    lines = ["| shift family | cell | n | best detector (domain) | AUROC ± SE | power α=0.05 | best trivial baseline (domain) | AUROC ± SE | gap ± SE | verdict |",
             "|---|---|---:|---|---:|---:|---|---:|---:|---|"]
    for cell in cells:
        rows = list(results[cell["name"]].values())
        det = max((r for r in rows if r["detector"] not in TRIVIAL), key=lambda r: r["auroc"])
        triv = max((r for r in rows if r["detector"] in TRIVIAL), key=lambda r: r["auroc"])
        g = {"trivial": triv, "gap": det["auroc"] - triv["auroc"], "gap_se": math.hypot(det["auroc_se"], triv["auroc_se"])}
        lines.append(f"| {cell['family']} | {cell['name'].removeprefix('suite-')} | {det['n_id']} + {det['n_ood']} | {_name(det)} ({det['domain']}) | "
                     f"{det['auroc']:.3f} ± {det['auroc_se']:.3f} | {det['power_05']:.2f} | {_name(triv)} ({triv['domain']}) | "
                     f"{triv['auroc']:.3f} ± {triv['auroc_se']:.3f} | {g['gap']:+.3f} ± {g['gap_se']:.3f} | {verdict(g)} |")
    return "\n".join(lines) + "\n"


def _name(r: dict) -> str:
    return r["detector"] + (f" [{r['label']}]" if r.get("label") else "")


def verdict(row: dict) -> str:
    if row["trivial"] is None:
        return "no trivial baseline in this domain"
    g, se = row["gap"], row["gap_se"]
    if g < -2 * se:
        return "**trivial baseline wins**"
    if g <= 2 * se:
        return "**tie with a trivial baseline** (within 2 SE)"
    return "prior wins"


def render(table: list[dict]) -> str:
    lines = ["| cell | family | domain | n | best detector (prior) | AUROC ± SE | power α=0.05 | NFE | best trivial baseline | AUROC ± SE | gap ± SE | verdict |",
             "|---|---|---|---:|---|---:|---:|---:|---|---:|---:|---|"]
    for r in table:
        b, t = r["best"], r["trivial"]
        tr = (f"{_name(t)} ({t['domain']}) | {t['auroc']:.3f} ± {t['auroc_se']:.3f} | {r['gap']:+.3f} ± {r['gap_se']:.3f}" if t else "— | — | —")
        lines.append(f"| {r['cell'].removeprefix('suite-')} | {r['family']} | {r['domain']} | {r['n']} + {r['n']} | {_name(b)} | "
                     f"{b['auroc']:.3f} ± {b['auroc_se']:.3f} | {b['power_05']:.2f} | {b['nfe_per_image']:.0f} | {tr} | {verdict(r)} |")
    return "\n".join(lines) + "\n"


def page_text(cells: list[dict], out: Path, summary_md: str, mode: str, cmd: str, threads: int) -> str:
    """docs/benchmarks.md: how to regenerate, the summary, then every cell's full table."""
    import datetime
    import platform

    import torch

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# Benchmarks: the shift suite", "",
             "Benchmarks a statistic of the measurements' size cannot pass (issue 21): energy-matched dataset pairs beside the raw ones, "
             "near-OOD held-out classes, structure-only shifts. Each cell is a `priorshift bench` config in `benchmarks/configs/suite-*.toml` "
             "(written by `benchmarks/suite.py` from its `CELLS`); no setting is tuned on any cell's OOD set, and each row says how its "
             "settings were chosen.", "",
             "Regenerate:", "", "```bash",
             "python benchmarks/run_all.py --suite                 # the full suite → benchmarks/results/suite/ and this page (~1 CPU-hour)",
             "python benchmarks/run_all.py --suite --quick         # CI-size: 8 + 8 images, 20 steps (a few minutes; not accuracy)",
             "python benchmarks/suite.py run --only suite-structure-jigsaw --out benchmarks/results/suite   # one cell (scores are cached per row)",
             "priorshift bench benchmarks/configs/suite-fmnist-mnist-matched.toml --out OUT                  # one cell, through the CLI",
             "```", "",
             f"This page: mode {mode}; `{cmd}`, {when}; {platform.machine()}, {threads} thread(s), torch {torch.__version__}. "
             "The quick pass over every other benchmark script is `python benchmarks/run_all.py --quick` (→ `docs/benchmarks-quick.md`).", "",
             "How the shifts are made. Energy matching (`priorshift.data.match_energy`) changes each OOD image by an affine intensity map: "
             "a gain around the background value −1 where a gain reaches the target energy, else the smallest lift of the background that "
             "does (MNIST digits under identity and blur need it: too little mid-grey to lose energy otherwise), so matched digits can sit "
             "on a slightly grey background — a background-level statistic, which is not among the trivial baselines here, could see that; "
             "‖y‖² cannot. Structure-only shifts permute each image's pixels (`tile-shuffle`, `jigsaw`, `flip`), so every intensity "
             "statistic of the image is unchanged; each one's docstring says where a user meets it.", "",
             "## Summary", "",
             "Per cell and measurement domain: the best detector that uses the prior and the best trivial baseline (no prior, 0 NFE; on "
             "clean images, the identity domain's), by AUROC; the gap with SE sqrt(SE₁² + SE₂²) (conservative: paired items); the verdict "
             "at 2 SE. The best of several rows is picked on the evaluation set, so read it as an upper estimate. Power: the fraction of "
             "OOD items with conformal p-value ≤ 0.05, calibrated on the row's ID scores.", "", summary_md.strip(), ""]
    for cell in cells:
        table = (out / cell["name"] / "results.md").read_text(encoding="utf-8").strip().splitlines()
        lines += [f"## {cell['name']}", "", f"Family: {cell['family']}. Config: `benchmarks/configs/{cell['name']}.toml`.", ""]
        lines += ["#" * 2 + line if line.startswith("#") else line for line in table[1:]]
        lines.append("")
    local = Path(__file__).resolve().parent / "results" / "local-shifts" / "results.md"  # the CT family (benchmarks/local_shifts.py)
    if local.exists():
        table = local.read_text(encoding="utf-8").strip().splitlines()
        lines += ["## Local shifts (CT): stars, scars, lesions and two untuned insert types", "",
                  "Written by `benchmarks/local_shifts.py` (not a `priorshift bench` cell: KLIP traces and image detectors on CT phantoms), "
                  "copied here as it stands in `benchmarks/results/local-shifts/results.md`.", ""]
        lines += ["#" * 2 + line if line.startswith("#") else line for line in table[1:]]
        lines.append("")
    return "\n".join(lines)


def run(names: list[str], out: Path, quick: bool, threads: int, page: Path | None = None) -> int:
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT / "src"))
    from priorshift.bench.grid import load_config, run_grid
    from priorshift.io import atomic_write, atomic_write_json

    cells = [c for c in CELLS if c["name"] in names]
    results = {}
    os.chdir(ROOT)  # tables name their output folder relative to the repository root
    out = Path(os.path.relpath(out, ROOT)) if out.is_relative_to(ROOT) else out
    with tempfile.TemporaryDirectory(prefix="priorshift-suite-") as tmp:
        for cell in cells:
            print(f"suite: {cell['name']}", file=sys.stderr, flush=True)
            if quick:
                path = Path(tmp) / f"{cell['name']}.toml"
                path.write_text(to_toml(quick_cell(cell)), encoding="utf-8")
            else:
                path = CONFIGS / f"{cell['name']}.toml"
                if path.read_text(encoding="utf-8") != to_toml(cell):
                    raise SystemExit(f"{path} differs from suite.py's CELLS: run `python benchmarks/suite.py configs` first")
            cfg = load_config(path)
            cfg["_path"] = f"benchmarks/configs/{cell['name']}.toml" + (" (quick)" if quick else "")
            results[cell["name"]] = run_grid(cfg, out / cell["name"])
    table, md = summarise(cells, results)
    mode = "quick (8 + 8 images, 20 steps: shows that every cell runs, not accuracy; power is 0 by construction, 1/(n+1) > 0.05)" if quick else "full"
    cmd = f"python benchmarks/suite.py run{' --quick' if quick else ''} --out {out} --threads {threads}"
    text = (f"# Shift suite: summary\n\nMode: {mode}. Command: `{cmd}`. Per cell and measurement domain, the best detector that uses the "
            "prior and the best trivial baseline (no prior, 0 NFE; on clean images: the identity domain's), the gap with SE "
            "sqrt(SE₁² + SE₂²) (conservative), and the verdict at 2 SE. Full tables: each cell's `results.md`.\n\n" + md
            + "\n## Per cell, over all its domains (the README's headline)\n\n" + headline(cells, results))
    atomic_write(out / "summary.md", lambda p: Path(p).write_text(text, encoding="utf-8"))
    if page is not None:
        body = page_text(cells, out, md + "\nPer cell, over all its domains (the README's headline):\n\n" + headline(cells, results), mode, cmd, threads)
        atomic_write(page, lambda p: Path(p).write_text(body, encoding="utf-8"))
    atomic_write_json(out / "summary.json", [{**r, "best": {k: r["best"][k] for k in ("detector", "label", "auroc", "auroc_se", "power_05", "nfe_per_image")},
                                              "trivial": r["trivial"] and {k: r["trivial"][k] for k in ("detector", "label", "domain", "auroc", "auroc_se")}}
                                             for r in table])
    print(text)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["configs", "run"])
    p.add_argument("--only", default=None, help="comma-separated cells (default: all): " + ", ".join(NAMES))
    p.add_argument("--quick", action="store_true", help="8 + 8 images, 20 steps (CI-size)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS") or 1))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "suite"))
    p.add_argument("--page", default=None, help="also write the full page (summary + every cell's table), e.g. docs/benchmarks.md")
    args = p.parse_args(argv)
    if args.action == "configs":
        for path in write_configs():
            print(path.relative_to(ROOT))
        return 0
    names = NAMES if not args.only else [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = [w for w in names if w not in NAMES]
    if unknown:
        p.error(f"unknown cell {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    return run(names, Path(args.out).resolve(), args.quick, args.threads, Path(args.page) if args.page else None)


if __name__ == "__main__":
    raise SystemExit(main())
