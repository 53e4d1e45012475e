"""Helpers of the robustness tests (``tests/test_robustness*.py``): a tiny prior trained by the CLI, a snapshot of a
folder, and the check that a CLI call was refused with one clear line and changed nothing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from priorshift.cli import main

SCORE = ["--quiet", "--threads", "1", "--plan", "steps=3", "--param", "samples=1"]


def train_tiny(d: Path) -> Path:
    """A 16×16 prior trained for 3 steps by ``priorshift train`` in ``d/run``, from 40 uint8 images ``d/imgs.npy``;
    returns the prior's path."""
    imgs = (np.random.default_rng(0).random((40, 1, 16, 16)) * 255).astype(np.uint8)
    np.save(d / "imgs.npy", imgs)
    assert main(["train", "--data", f"npy:{d / 'imgs.npy'}", "--image-size", "16", "--steps", "3", "--batch-size", "4",
                 "--widths", "8,16", "--out", str(d / "run"), "--quiet", "--no-grid", "--threads", "1"]) == 0
    return d / "run" / "run.safetensors"


def snapshot(root: Path) -> dict:
    """Every file and directory under ``root`` with its content hash: 'exactly as before the call'."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def refused(argv, capsys, root: Path, *needles: str) -> str:
    """Run the CLI; assert exit code 2, one line naming every needle, no traceback, ``root`` unchanged."""
    before = snapshot(root)
    capsys.readouterr()
    assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert snapshot(root) == before, "a refused run must leave everything as it was"
    return err


def scores(out: Path) -> np.ndarray:
    """The score column of ``out/scores.csv``."""
    import csv

    with open(out / "scores.csv", newline="") as f:
        return np.array([float(r["score"]) for r in csv.DictReader(f)])
