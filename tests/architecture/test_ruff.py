"""Lint: ``ruff check`` with the rule set of ``[tool.ruff]`` in pyproject.toml (diffusers' set) over every
Python folder of the project. Skipped only when ruff is not installed (it is in the ``dev`` extra)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("iceb", "editors", "tests", "bench", "scripts")


def _ruff() -> list[str] | None:
    exe = shutil.which("ruff") or (Path(sys.executable).parent / "ruff")
    if Path(exe).is_file():
        return [str(exe)]
    try:
        import ruff  # noqa: F401  (the PyPI wheel also runs as `python -m ruff`)
    except ImportError:
        return None
    return [sys.executable, "-m", "ruff"]


def test_ruff_check_is_clean():
    ruff = _ruff()
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    folders = [f for f in FOLDERS if (ROOT / f).is_dir()]
    proc = subprocess.run([*ruff, "check", "--no-cache", "--output-format", "concise", *folders], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"ruff check {' '.join(folders)} failed:\n{proc.stdout}{proc.stderr}"
