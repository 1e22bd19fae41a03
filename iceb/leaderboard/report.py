"""A single self-contained HTML report that opens on the answer.

Order, as ``leaderboard.md``'s: per task and model the headline table (the paper's metrics × N, ± SE, best
per column marked; :mod:`iceb.leaderboard.headline`) and the headline figure; then the runs' before/after
grids, each row labelled ``source → destination``; then, folded away, every raw metric (the same
:func:`~iceb.leaderboard.pivot.pivot` as ``leaderboard.md``'s appendix, metric-major) and one plot per metric.
Images are embedded as base64 PNG so the file can be mailed or opened anywhere. Grids come from the run
folders (``grids/n<N>.png``, written by ``iceb evaluate``): one row per edited concept, then holdout prompts;
left column before the edit, right after. The page is ``templates/report.html.j2`` (jinja2, autoescaped).
"""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Sequence

from iceb.leaderboard.headline import ERASER_NA
from iceb.leaderboard.pivot import arrow, cell, n_columns, pivot_tables
from iceb.leaderboard.results import SMOKE_MARK
from iceb.leaderboard.robustness import NOTE as ROBUSTNESS_NOTE
from iceb.utils.io import read_json

TEMPLATE = "report.html.j2"


def _b64(path: Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def _tables(df) -> list[dict[str, Any]]:
    """The pivot tables as the template shows them (no bound column: the plots draw the bounds)."""
    out = []
    from iceb.leaderboard.headline import headline_table
    from iceb.leaderboard.robustness import robustness_table

    for task, model, table in pivot_tables(df):
        ns = n_columns(table)
        rows = [{"label": label, "subset": subset, "metric": metric, "arrow": arrow(r["higher_is_better"]),
                 "cells": [cell(r, n) for n in ns]} for (subset, metric, label), r in table.iterrows()]
        head = headline_table(df[(df["task"] == task) & (df["model"] == model)], task)
        out.append({"task": task, "model": model, "smoke": bool(table["smoke"].any()), "ns": ns, "rows": rows,
                    "headline": head, "stem": f"{task}__{model}",
                    "robustness": robustness_table(df, task, model)})
    return out


def _run_section(run: Path) -> dict[str, Any]:
    cfg_path, man_path = run / "config.json", run / "manifest.json"
    cfg = read_json(cfg_path) if cfg_path.is_file() else {}
    man = read_json(man_path) if man_path.is_file() else {}
    c = cfg.get("config", {})
    grids = sorted((run / "grids").glob("n*.png"), key=lambda p: int(p.stem[1:])) if (run / "grids").is_dir() else []
    return {"title": f"{c.get('editor', '?')} on {c.get('task', '?')} ({(cfg.get('model') or {}).get('spec', '?')})",
            "smoke": bool(cfg.get("smoke") or run.name.endswith("-smoke")), "name": run.name,
            "mode": str(c.get("mode")), "git": str(cfg.get("git_revision")), "iceb": str(cfg.get("iceb_version")),
            "grids": [{"n": g.stem[1:], "data": _b64(g), "prompts": _grid_rows(man, g.stem[1:])} for g in grids]}


def _grid_rows(manifest: dict[str, Any], n: str) -> list[str]:
    """The grid's row labels (``source → destination: prompt``); the bare prompts for runs made before them."""
    plan = manifest.get("edit_counts", {}).get(n) or {}
    return plan.get("grid_rows") or plan.get("grid_prompts") or []


def render_report(df, plot_files: Sequence[Path], runs: Sequence[Path]) -> str:
    """The report's HTML.

    Args:
        df: leaderboard rows (:func:`iceb.leaderboard.tables.frame`).
        plot_files: PNGs from :func:`iceb.leaderboard.plots.plot_all` (``*__headline.png`` shown first).
        runs: the run folders, for their before/after grids.

    Returns:
        The page, self-contained.
    """
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("iceb.leaderboard", "templates"),
                             autoescape=True, keep_trailing_newline=True)
    plots = [{"name": p.stem, "data": _b64(p), "headline": p.name.endswith(("__headline.png", "__robustness.png"))}
             for p in plot_files]
    tables = _tables(df)
    figures = {p["name"]: p for p in plots if p["headline"]}
    for t in tables:
        t["figure"] = figures.get(f"{t['stem']}__headline")
        t["robust_figure"] = figures.get(f"{t['stem']}__robustness")
    return env.get_template(TEMPLATE).render(
        smoke=bool(df["smoke"].astype(bool).any()) if not df.empty else False, smoke_mark=SMOKE_MARK,
        n_runs=len(runs), n_rows=len(df), tables=tables, eraser_na=ERASER_NA,
        robustness_note=ROBUSTNESS_NOTE.replace("*", "").replace("`", ""),
        singles=[p for p in plots if not p["headline"]], runs=[_run_section(Path(r)) for r in runs])


def write_report(path: str | Path, df, plot_files: Sequence[Path], runs: Sequence[Path]) -> Path:
    """Write ``report.html``.

    Args:
        path: where to write it.
        df: leaderboard rows (:func:`iceb.leaderboard.tables.frame`).
        plot_files: the plot PNGs to embed.
        runs: the run folders whose grids to embed.

    Returns:
        ``path``.
    """
    from iceb.utils.io import write_text

    write_text(path, render_report(df, plot_files, runs))
    return Path(path)
