"""Leaderboard CSVs from run folders: one tidy CSV per task and a combined one."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from iceb.results import load_run, write_csv


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    runs: list[Path] = []
    for p in map(Path, paths):
        if (p / "results.jsonl").is_file():
            runs.append(p)
        elif p.is_dir():
            runs.extend(sorted(d for d in p.iterdir() if (d / "results.jsonl").is_file()))
        else:
            raise FileNotFoundError(f"{p} is neither a run folder nor a folder of runs")
    if not runs:
        raise FileNotFoundError(f"no run folders (with results.jsonl) under {', '.join(map(str, paths))}")
    return runs


def collect_rows(paths: Sequence[str | Path]) -> list[dict]:
    rows: list[dict] = []
    for run in find_runs(paths):
        config, run_rows = load_run(run)
        versions = config.get("versions", {})
        for r in run_rows:
            rows.append({**r, "versions": ";".join(f"{k}={v}" for k, v in sorted(versions.items()))})
    return rows


def build_leaderboard(paths: Sequence[str | Path], out: str | Path) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = collect_rows(paths)
    written = [write_csv(rows, out / "combined.csv")]
    for task in sorted({r["task"] for r in rows}):
        written.append(write_csv([r for r in rows if r["task"] == task], out / f"{task}.csv"))
    return written
