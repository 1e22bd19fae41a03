"""Leaderboard: tidy CSVs, a Markdown table, plots and an HTML report from run folders.

``iceb leaderboard RUNS... --out DIR`` writes ``DIR/<task>.csv`` (one per task), ``DIR/combined.csv``,
``DIR/leaderboard.md``, ``DIR/plots/*.png`` (each metric against the number of edits, log x, one line per
editor) and ``DIR/report.html`` (tables, plots and the runs' before/after grids). Columns are explained in
``leaderboard/README.md``. Rows of ``--limit`` runs carry ``smoke=true`` and are marked SMOKE everywhere.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from iceb.leaderboard.pivot import arrow, cell, fmt, n_columns, pivot_tables
from iceb.leaderboard.results import SMOKE_MARK, load_run, rows_to_frame
from iceb.leaderboard.schema import LEADERBOARD_COLUMNS


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


def _data_hash(config: dict[str, Any], n: int) -> str | None:
    fps = (config.get("data") or {}).get("task_fingerprints") or {}
    return fps.get(str(n))


def collect_rows(paths: Sequence[str | Path]) -> list[dict]:
    """Every completed row of every run, with the run's provenance and a plot label."""
    rows: list[dict] = []
    for run in find_runs(paths):
        config, run_rows = load_run(run)
        versions = config.get("versions", {})
        vtext = ";".join(f"{k}={v}" for k, v in sorted(versions.items()))
        for r in run_rows:
            rows.append({**r, "versions": vtext, "git_revision": config.get("git_revision"),
                         "data_hash": _data_hash(config, r["n_edits"]), "hparams_hash": config.get("hparams_hash"),
                         "run_dir": str(run)})
    _label(rows)
    return rows


def _label(rows: list[dict]) -> None:
    """Legend label: the editor, plus the run hash where one task/model has several runs of an editor."""
    runs_of: dict[tuple, set] = {}
    for r in rows:
        runs_of.setdefault((r["task"], r["model"], r["editor"], r["mode"]), set()).add(r["run_id"])
    for r in rows:
        label = r["editor"] if r["mode"] == "batch" else f"{r['editor']} ({r['mode']})"
        if len(runs_of[(r["task"], r["model"], r["editor"], r["mode"])]) > 1:
            label += f" [{r['run_hash']}]"
        if r["smoke"]:
            label += " [SMOKE]"
        r["label"] = label


def frame(rows: list[dict]):
    """The leaderboard frame: :data:`~iceb.leaderboard.schema.LEADERBOARD_COLUMNS` first, then any others."""
    import pandas as pd

    df = rows_to_frame(rows)
    if df.empty:
        return pd.DataFrame(columns=LEADERBOARD_COLUMNS)
    for c in LEADERBOARD_COLUMNS:
        if c not in df.columns:
            df[c] = None
    return df[LEADERBOARD_COLUMNS + [c for c in df.columns if c not in LEADERBOARD_COLUMNS]]


def _write_frame(df, path: Path) -> Path:
    from iceb.utils.io import atomic_path

    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return path


def markdown(df) -> str:
    """One table per task and model: editors x (subset, metric) rows, edit counts as columns."""
    lines = ["# ICEB leaderboard", ""]
    if df["smoke"].astype(bool).any():
        lines += [f"> **{SMOKE_MARK}**: rows marked [SMOKE] come from `--limit` runs.", ""]
    for task, model, table in pivot_tables(df):
        ns = n_columns(table)
        lines += [f"## {task} on {model}" + (f" ({SMOKE_MARK})" if table["smoke"].all() else ""), ""]
        lines.append("| editor | subset | metric | bound | " + " | ".join(ns) + " |")
        lines.append("|---|---|---|---|" + "---|" * len(ns))
        for (label, subset, metric), r in table.iterrows():
            lines.append(f"| {label} | {subset} | {metric} {arrow(r['higher_is_better'])} | {fmt(r['bound'])} | "
                         + " | ".join(cell(r, n) for n in ns) + " |")
        lines.append("")
    return "\n".join(lines)


def build_leaderboard(paths: Sequence[str | Path], out: str | Path, plots: bool = True,
                      report: bool = True) -> list[Path]:
    """Write the CSVs, the Markdown table, the plots and the HTML report; returns the files written."""
    from iceb.utils.io import write_text
    from iceb.utils.paths import inside, safe_filename

    rows = collect_rows(paths)  # every row is read and checked before anything is written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df = frame(rows).drop(columns=["run_dir"], errors="ignore")
    written = [_write_frame(df, out / "combined.csv")]
    for task in sorted(df["task"].unique()):
        # the name comes from the rows (maybe someone else's run folder): sanitised, and kept inside --out
        written.append(_write_frame(df[df["task"] == task], inside(out, out / f"{safe_filename(task)}.csv")))
    md = markdown(df)
    write_text(out / "leaderboard.md", md)
    written.append(out / "leaderboard.md")
    plot_files: list[Path] = []
    if plots:
        from iceb.leaderboard.plots import plot_all

        plot_files = plot_all(df, out / "plots")
        written.extend(plot_files)
    if report:
        from iceb.leaderboard.report import write_report

        runs = sorted({r["run_dir"] for r in rows})
        written.append(write_report(out / "report.html", df, plot_files, [Path(r) for r in runs]))
    return written

