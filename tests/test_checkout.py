"""The checkout itself: no tracked file names a path of the machine it was built on."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Built from pieces so that this file does not match its own pattern.
MACHINE_PATH = re.compile("(?<![\\w.])/(" + "|".join(["wo" + "rk", "ro" + "ot", "t" + "mp"]) + ")/")


def _tracked_files() -> list[Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (installed package or source archive)")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    return [ROOT / p for p in out.decode().split("\0") if p]


def _is_text(path: Path) -> bool:
    with open(path, "rb") as f:
        return b"\0" not in f.read(8000)  # git's own binary heuristic


def test_the_pattern_finds_machine_paths_and_only_them():
    for hit in ["--out /" + "work/runs/x", "`/" + "tmp/a.png`", "/" + "root/.cache"]:
        assert MACHINE_PATH.search(hit), hit
    for miss in ["--out runs/phantom-ct-64", "/usr/share/dataset", "my" + "/" + "work/dir", "a.tmp/b"]:
        assert not MACHINE_PATH.search(miss), miss


def test_no_tracked_text_file_names_a_build_machine_path():
    files = [p for p in _tracked_files() if p.is_file() and _is_text(p)]
    assert len(files) > 50  # the listing worked
    hits = []
    for path in files:
        for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if MACHINE_PATH.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()[:120]}")
    assert not hits, "absolute paths of the build machine in tracked files (make them relative):\n" + "\n".join(hits)
