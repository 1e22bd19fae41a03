"""Leaderboard: tidy CSVs, a Markdown table, plots and an HTML report from run folders.

``iceb leaderboard RUNS... --out DIR`` writes ``DIR/<task>.csv`` (one per task), ``DIR/combined.csv``,
``DIR/leaderboard.md``, ``DIR/plots/*.png`` (each metric against the number of edits, log x, one line per
editor) and ``DIR/report.html`` (tables, plots and the runs' before/after grids). Columns are explained in
``leaderboard/README.md``. Rows of ``--limit`` runs carry ``smoke=true`` and are marked SMOKE everywhere.

Both ``leaderboard.md`` and the report open on the answer — the headline table and figure of
:mod:`iceb.leaderboard.headline` — and keep every raw metric for an appendix, metric-major. The inputs may be
run folders or published leaderboard CSVs (``combined.csv`` of another ``iceb leaderboard``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from iceb.leaderboard.pivot import arrow, cell, fmt, n_columns, pivot_tables
from iceb.leaderboard.results import SMOKE_MARK, load_run, rows_to_frame
from iceb.leaderboard.schema import LEADERBOARD_COLUMNS


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """The run folders under ``paths`` (leaderboard CSV files among them are skipped: :func:`collect_rows`)."""
    runs: list[Path] = []
    for p in map(Path, paths):
        if p.is_file() and p.suffix == ".csv":
            continue
        if (p / "results.jsonl").is_file():
            runs.append(p)
        elif p.is_dir():
            runs.extend(sorted(d for d in p.iterdir() if (d / "results.jsonl").is_file()))
        else:
            raise FileNotFoundError(f"{p} is neither a run folder nor a folder of runs")
    if not runs and not any(Path(p).suffix == ".csv" and Path(p).is_file() for p in paths):
        raise FileNotFoundError(f"no run folders (with results.jsonl) under {', '.join(map(str, paths))}")
    return runs


def csv_rows(path: str | Path) -> list[dict]:
    """The rows of a published leaderboard CSV (``combined.csv`` or ``<task>.csv``), checked for the row columns.

    Args:
        path: The CSV file.

    Returns:
        Its rows as dicts (NaN cells as None), with ``run_dir`` None (no run folder: no grids).

    Raises:
        ValueError: The file lacks a column every leaderboard row has.
    """
    import dataclasses

    import pandas as pd

    from iceb.leaderboard.schema import ResultRow

    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable leaderboard CSV: {err}") from None
    required = [f.name for f in dataclasses.fields(ResultRow)  # the fields every row has (no default)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not a leaderboard CSV (no column {', '.join(missing)})")
    df = df.astype(object).where(df.notna(), None)
    return [{**r, "run_dir": None} for r in df.to_dict("records")]


def _data_hash(config: dict[str, Any], n: int) -> str | None:
    fps = (config.get("data") or {}).get("task_fingerprints") or {}
    return fps.get(str(n))


def collect_rows(paths: Sequence[str | Path], editor_supports: Mapping[str, Any] | None = None) -> list[dict]:
    """Every completed row of every run (and of every leaderboard CSV given), with provenance and a plot label.

    Args:
        paths: Run folders, folders of runs, or leaderboard CSV files.
        editor_supports: Editor name -> the request kinds it supports, for rows whose run did not record it
            (older runs, CSVs without ``erase_only``); the CLI passes the editor registry's.

    Returns:
        The rows; ``erase_only`` is True for an editor that takes no destination (ESD), None where unknown.
    """
    rows: list[dict] = []
    for run in find_runs(paths):
        config, run_rows = load_run(run)
        versions = config.get("versions", {})
        vtext = ";".join(f"{k}={v}" for k, v in sorted(versions.items()))
        supports = config.get("editor_supports")
        for r in run_rows:
            rows.append({**r, "versions": vtext, "git_revision": config.get("git_revision"),
                         "data_hash": _data_hash(config, r["n_edits"]), "hparams_hash": config.get("hparams_hash"),
                         "erase_only": None if supports is None else set(supports) == {"erase"},
                         "run_dir": str(run)})
    for p in paths:
        if Path(p).is_file() and Path(p).suffix == ".csv":
            rows.extend(csv_rows(p))
    dev = sorted({r["run_id"] for r in rows if r.get("split") == "dev"})
    if dev:  # a tuning trial's numbers are chosen on its split: never leaderboard numbers
        raise ValueError(f"run(s) {', '.join(dev[:3])}{' ...' if len(dev) > 3 else ''} are dev-split runs (tuning "
                         f"trials); a leaderboard holds test-split runs only")
    for r in rows:
        if r.get("erase_only") is None and editor_supports and r["editor"] in editor_supports:
            r["erase_only"] = set(editor_supports[r["editor"]]) == {"erase"}
    had = {id(r) for r in rows if r.get("label")}
    _label([r for r in rows if id(r) not in had])
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


def presets_markdown(df) -> list[str]:
    """One line naming each editor's hyperparameter preset, whether ``iceb tune`` made it, and its record's hash
    (nothing for rows written before the columns existed)."""
    if "preset" not in df.columns or df["preset"].isna().all():
        return []
    parts = []
    for editor, g in df.groupby("editor", sort=True):
        p = g.iloc[0]
        if p.get("preset") is None or p["preset"] != p["preset"]:
            continue
        tuned = bool(p.get("tuned")) if p.get("tuned") == p.get("tuned") else False
        parts.append(f"{editor}: `{p['preset']}`" + (f" (tuned, record `{p['tuning_hash']}`)" if tuned else
                                                      " (untuned)"))
    return [f"Presets: {'; '.join(parts)}.", ""] if parts else []


def markdown(df) -> str:
    """The answer first: per task and model the headline table (:mod:`iceb.leaderboard.headline`), then the
    robustness table where a run had ``--attacks`` (:mod:`iceb.leaderboard.robustness`); then, as an appendix, every raw metric, metric-major ((subset, metric) then editor rows, edit counts as columns)."""
    from iceb.leaderboard.headline import ERASER_NA, headline_markdown, headline_table
    from iceb.leaderboard.robustness import robustness_markdown

    lines = ["# ICEB leaderboard", ""]
    if df["smoke"].astype(bool).any():
        lines += [f"> **{SMOKE_MARK}**: rows marked [SMOKE] come from `--limit` runs.", ""]
    tables = pivot_tables(df)
    for task, model, _ in tables:
        head = headline_table(df[(df["task"] == task) & (df["model"] == model)], task)
        if head is None:
            continue
        lines += [f"## {task} on {model}: headline", "",
                  f"Value ± standard error (requests as clusters); best per column in bold; {ERASER_NA}: an "
                  "editor that takes no destination, where the number means nothing. Plot: "
                  f"`plots/{task}__{model}__headline.png`.", ""]
        lines += headline_markdown(head) + [""]
        lines += presets_markdown(df[(df["task"] == task) & (df["model"] == model)])
    for task, model, _ in tables:
        lines += robustness_markdown(df, task, model)
    lines += ["# Appendix: every metric", "", "Bound: the unedited model's best reachable value (for "
              "holdout_delta and dest_forget the worst, everything lost). Columns in leaderboard/README.md.", ""]
    for task, model, table in tables:
        ns = n_columns(table)
        lines += [f"## {task} on {model}" + (f" ({SMOKE_MARK})" if table["smoke"].all() else ""), ""]
        lines.append("| subset | metric | editor | bound | " + " | ".join(ns) + " |")
        lines.append("|---|---|---|---|" + "---|" * len(ns))
        for (subset, metric, label), r in table.iterrows():
            lines.append(f"| {subset} | {metric} {arrow(r['higher_is_better'])} | {label} | {fmt(r['bound'])} | "
                         + " | ".join(cell(r, n) for n in ns) + " |")
        lines.append("")
    return "\n".join(lines)


def build_leaderboard(paths: Sequence[str | Path], out: str | Path, plots: bool = True,
                      report: bool = True, editor_supports: Mapping[str, Any] | None = None) -> list[Path]:
    """Write the CSVs, the Markdown table, the plots and the HTML report; returns the files written.

    Args:
        paths: Run folders, folders of runs, or leaderboard CSV files.
        out: The output folder.
        plots: Write the PNG plots.
        report: Write ``report.html``.
        editor_supports: As for :func:`collect_rows`.

    Returns:
        The files written.
    """
    from iceb.utils.io import write_text
    from iceb.utils.paths import inside, safe_filename

    rows = collect_rows(paths, editor_supports)  # every row is read and checked before anything is written
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

        runs = sorted({r["run_dir"] for r in rows if r.get("run_dir")})
        written.append(write_report(out / "report.html", df, plot_files, [Path(r) for r in runs]))
    return written

