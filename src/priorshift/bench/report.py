"""Static HTML reports: tables, PNG figures, the resolved configuration — one self-contained folder.

A :class:`Report` collects sections and writes ``report.html`` next to its figures (paths relative to the
report, so the folder can be moved or served as is), atomically. :func:`comparison_report` builds the report of
a detector comparison from per-row score files (the layout ``benchmarks/ood_fmnist_mnist.py`` writes): the
results table with the trivial baselines, ROC curves per domain and ID-vs-OOD score histograms per row.
"""

from __future__ import annotations

import html
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from priorshift.io import atomic_write

__all__ = ["Report", "comparison_report", "rebuild_report"]

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; } th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.baseline td { background: #fbf8ee; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; vertical-align: top; } figcaption { font-size: 12px; color: #555; max-width: 420px; }
img { max-width: 100%; } pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 12px; }
p.note { color: #555; }
"""


@dataclass
class Report:
    """An HTML report under construction: ``add_text``, ``add_table``, ``add_figure``, ``add_config``, ``write``."""

    title: str
    root: Path
    _parts: list[str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)

    def __post_init__(self):
        self.root = Path(self.root)

    def add_heading(self, text: str) -> "Report":
        self._parts.append(f"<h2>{html.escape(text)}</h2>")
        return self

    def add_text(self, text: str, note: bool = False) -> "Report":
        cls = ' class="note"' if note else ""
        self._parts.append(f"<p{cls}>{html.escape(text)}</p>")
        return self

    def add_table(self, header: Sequence[str], rows: Sequence[Sequence[Any]], *, highlight: Sequence[bool] | None = None) -> "Report":
        """A table; numbers are right-aligned, ``highlight[i]`` marks row i (the trivial baselines)."""
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = []
        for i, row in enumerate(rows):
            cells = "".join(
                f'<td class="num">{html.escape(_fmt(v))}</td>' if isinstance(v, (int, float)) else f"<td>{html.escape(str(v))}</td>" for v in row
            )
            cls = ' class="baseline"' if highlight is not None and highlight[i] else ""
            body.append(f"<tr{cls}>{cells}</tr>")
        self._parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")
        return self

    def add_figure(self, path: str | Path, caption: str = "") -> "Report":
        """A PNG that already exists under the report's folder (referenced by its relative path)."""
        path = Path(path)
        candidates = [path] if path.is_absolute() else [self.root / path, Path.cwd() / path]
        full = next((c.resolve() for c in candidates if c.is_file()), None)
        if full is None:
            raise ValueError(f"figure {candidates[0]} does not exist; draw it before adding it to the report")
        try:
            rel = full.relative_to(self.root.resolve())
        except ValueError:
            raise ValueError(f"figure {full} is not inside the report's folder {self.root}; draw it there") from None
        self.figures.append(rel)
        self._parts.append(f'<figure><img src="{html.escape(rel.as_posix())}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>')
        return self

    def add_config(self, config: Any, label: str = "configuration") -> "Report":
        text = config if isinstance(config, str) else json.dumps(config, indent=2, sort_keys=True, default=str)
        self._parts.append(f"<details open><summary>{html.escape(label)}</summary><pre>{html.escape(text)}</pre></details>")
        return self

    def html(self) -> str:
        import torch

        import priorshift

        versions = f"priorshift {priorshift.__version__}, torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()}"
        body = "\n".join(self._parts)
        return (
            f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(self.title)}</title>"
            f"<style>{_CSS}</style></head><body>\n<h1>{html.escape(self.title)}</h1>\n{body}\n"
            f"<p class=\"note\">Higher score = more shifted. {html.escape(versions)}.</p>\n</body></html>\n"
        )

    def write(self, name: str = "report.html") -> Path:
        """Write the report atomically; returns its path."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / name
        text = self.html()
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        return path


def _fmt(v) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:d}"
    if v != v:
        return "—"
    return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"


BASELINES = ("measurement-norm", "residual", "denoising-error", "score-norm")


def comparison_report(root: str | Path, results: dict[str, dict], *, title: str, intro: str = "", config: Any = None) -> Path:
    """The report of a detector comparison. ``results``: row key → ``{"detector", "domain", "scores_id",
    "scores_ood", "nfe_per_image", "seconds_per_image", "chosen", ...}`` (the per-row files of the benchmark).
    Draws ``figures/roc_<domain>.png`` and ``figures/hist_<row>.png`` under ``root``."""
    from priorshift.bench.figures import histogram_figure, roc_figure
    from priorshift.metrics import auroc_standard_error, ood_metrics

    root = Path(root)
    figs = root / "figures"
    rep = Report(title, root)
    if intro:
        rep.add_text(intro)
    header = ["detector", "domain", "AUROC", "± SE", "FPR@95 (OOD+)", "AUPR-in", "AUPR-out", "NFE / image", "s / image", "settings chosen by"]
    rows, marks = [], []
    by_domain: dict[str, dict] = {}
    for key, r in results.items():
        m = ood_metrics(r["scores_id"], r["scores_ood"])
        name = r["detector"] + (f" [{r['label']}]" if r.get("label") else "")
        rows.append([name, r["domain"], m["auroc"], auroc_standard_error(m["auroc"], m["n_id"], m["n_ood"]), m["fpr95_ood_positive"],
                     m["aupr_in"], m["aupr_out"], round(r["nfe_per_image"]), float(r["seconds_per_image"]), r.get("chosen", "")])
        marks.append(r["detector"] in BASELINES)
        by_domain.setdefault(r["domain"], {})[name] = (r["scores_id"], r["scores_ood"])
    rep.add_heading("Results")
    rep.add_table(header, rows, highlight=marks)
    rep.add_text("Shaded rows are the trivial baselines every table carries: if one of them beats a method, the table says so.", note=True)
    rep.add_heading("ROC curves")
    import numpy as np

    for domain, curves in by_domain.items():
        _figure(rep, f"ROC, {domain} (OOD positive)", roc_figure, {k: (np.asarray(a), np.asarray(b)) for k, (a, b) in curves.items()},
                figs / f"roc_{_slug(domain)}.png", title=domain)
    rep.add_heading("Score histograms, ID vs OOD")
    for key, r in results.items():
        _figure(rep, key, histogram_figure, {"ID": np.asarray(r["scores_id"]), "OOD": np.asarray(r["scores_ood"])}, figs / f"hist_{_slug(key)}.png",
                title=key)
    if config is not None:
        rep.add_heading("Configuration")
        rep.add_config(config)
    return rep.write()


def _figure(rep: Report, caption: str, draw, *args, **kw) -> None:
    """Draw a figure and add it to the report; a figure that fails is a warning (on stderr and in the report), never
    the loss of the report or of the scores behind it."""
    import sys

    try:
        rep.add_figure(draw(*args, **kw), caption)
    except Exception as e:  # noqa: BLE001 - a figure must never cost the results
        message = f"figure '{caption}' was not drawn ({type(e).__name__}: {' '.join(str(e).split())})"
        print(f"priorshift: warning: {message}", file=sys.stderr)
        rep.add_text(message, note=True)


def _slug(text: str) -> str:
    return "".join(c if (c.isascii() and c.isalnum()) or c in "-_" else "_" for c in text)


def rebuild_report(root: str | Path) -> Path:
    """(Re)build ``report.html`` in a results folder from what was saved there: a bench grid (``scores/*.json``
    and its ``results.json``) or a ``priorshift score`` run (``scores.csv`` and ``config.json``).

    Nothing in the folder changes until everything is drawn: the report and its figures are written into a
    temporary folder inside it, then moved into place file by file (each move atomic), ``report.html`` last; an
    error or an interruption before that leaves the folder as it was."""
    import os
    import shutil
    import tempfile

    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a results folder")
    stage = Path(tempfile.mkdtemp(prefix=".report.", dir=root))
    try:
        _build_report(root, stage)
        files = sorted(p.relative_to(stage) for p in stage.rglob("*") if p.is_file())
        for rel in sorted(files, key=lambda r: r == Path("report.html")):  # report.html last
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / rel, root / rel)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return root / "report.html"


def _build_report(root: Path, stage: Path) -> Path:
    """The report of the results in ``root``, written with its figures under ``stage`` (same relative paths)."""
    import csv
    import os

    import numpy as np

    from priorshift.bench.figures import histogram_figure
    grid_scores = sorted((root / "scores").glob("*.json")) if (root / "scores").is_dir() else []
    if grid_scores:
        results = {}
        for path in grid_scores:
            r = json.loads(path.read_text())
            results[r.get("key", path.stem)] = r
        summary = json.loads((root / "results.json").read_text()) if (root / "results.json").is_file() else {}
        order = [k for k in summary if k in results] + [k for k in results if k not in summary]
        return comparison_report(stage, {k: results[k] for k in order}, title=f"priorshift bench: {root.name}")
    if not (root / "scores.csv").is_file():
        raise ValueError(f"{root} holds neither a bench grid (scores/*.json) nor a score run (scores.csv); nothing to report")
    with open(root / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{root / 'scores.csv'} holds no scores")
    config = json.loads((root / "config.json").read_text()) if (root / "config.json").is_file() else {}
    scores = np.array([float(r["score"]) for r in rows])
    rep = Report(f"priorshift score: {root.name}", stage)
    det = config.get("detector", {})
    rep.add_text(f"{len(rows)} {config.get('input_kind', 'inputs')} scored with {det.get('detector', det) if isinstance(det, dict) else det}; "
                 f"{float(rows[0]['nfe']):.0f} NFE per image. Higher = more shifted.")
    rep.add_heading("Scores")
    _figure(rep, "distribution of the scores (no labels: a score run has no ground truth)", histogram_figure, {"all inputs": scores},
            rep.root / "figures" / "scores_hist.png", title="score distribution")
    top = sorted(rows, key=lambda r: -float(r["score"]))[:10]
    extra = [k for k in rows[0] if k not in ("index", "score", "nfe", "seed")]
    rep.add_table(["index", "score", "seed", *extra], [[int(r["index"]), float(r["score"]), int(r["seed"]), *(float(r[k]) for k in extra)] for r in top])
    rep.add_text("The ten most shifted inputs.", note=True)
    if (root / "heatmaps.png").is_file():
        rep.add_heading("Maps")
        try:
            os.link(root / "heatmaps.png", stage / "heatmaps.png")  # the same file: moving it back changes nothing
        except OSError:
            import shutil

            shutil.copy2(root / "heatmaps.png", stage / "heatmaps.png")
        rep.add_figure(stage / "heatmaps.png", "measurement → reconstruction → map (shared colour scale) for the first inputs")
    if config:
        rep.add_heading("Configuration")
        rep.add_config(config)
    return rep.write()
