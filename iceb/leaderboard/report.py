"""A single self-contained HTML report: the leaderboard tables, the plots, and per run the before/after grids.

Images are embedded as base64 PNG so the file can be mailed or opened anywhere. Grids come from the run
folders (``grids/n<N>.png``, written by ``iceb evaluate``): one row per edited concept (the first edit
prompt of each of the first requests), then holdout prompts; left column before the edit, right after.
The page is ``templates/report.html.j2`` (jinja2, autoescaped); its tables are the same
:func:`~iceb.leaderboard.pivot.pivot` as ``leaderboard.md``'s.
"""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Sequence

from iceb.leaderboard.pivot import arrow, cell, n_columns, pivot_tables
from iceb.leaderboard.results import SMOKE_MARK
from iceb.utils.io import read_json

TEMPLATE = "report.html.j2"


def _b64(path: Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def _tables(df) -> list[dict[str, Any]]:
    """The pivot tables as the template shows them (no bound column: the plots draw the bounds)."""
    out = []
    for task, model, table in pivot_tables(df):
        ns = n_columns(table)
        rows = [{"label": label, "subset": subset, "metric": metric, "arrow": arrow(r["higher_is_better"]),
                 "cells": [cell(r, n) for n in ns]} for (label, subset, metric), r in table.iterrows()]
        out.append({"task": task, "model": model, "smoke": bool(table["smoke"].any()), "ns": ns, "rows": rows})
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
            "grids": [{"n": g.stem[1:], "data": _b64(g),
                       "prompts": (man.get("edit_counts", {}).get(g.stem[1:]) or {}).get("grid_prompts") or []}
                      for g in grids]}


def render_report(df, plot_files: Sequence[Path], runs: Sequence[Path]) -> str:
    """The report's HTML.

    Args:
        df: leaderboard rows (:func:`iceb.leaderboard.tables.frame`).
        plot_files: PNGs from :func:`iceb.leaderboard.plots.plot_all` (``*__panel.png`` shown first).
        runs: the run folders, for their before/after grids.

    Returns:
        The page, self-contained.
    """
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("iceb.leaderboard", "templates"),
                             autoescape=True, keep_trailing_newline=True)
    plots = [{"name": p.stem, "data": _b64(p), "panel": p.name.endswith("__panel.png")} for p in plot_files]
    return env.get_template(TEMPLATE).render(
        smoke=bool(df["smoke"].astype(bool).any()) if not df.empty else False, smoke_mark=SMOKE_MARK,
        n_runs=len(runs), n_rows=len(df), tables=_tables(df), panels=[p for p in plots if p["panel"]],
        singles=[p for p in plots if not p["panel"]], runs=[_run_section(Path(r)) for r in runs])


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
