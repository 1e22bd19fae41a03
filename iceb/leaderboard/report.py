"""A single self-contained HTML report: the leaderboard tables, the plots, and per run the before/after grids.

Images are embedded as base64 PNG so the file can be mailed or opened anywhere. Grids come from the run
folders (``grids/n<N>.png``, written by ``iceb evaluate``): one row per edited concept (the first edit
prompt of each of the first requests), then holdout prompts; left column before the edit, right after.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Sequence

from iceb.leaderboard.results import SMOKE_MARK

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
h1,h2,h3{font-weight:600} table{border-collapse:collapse;font-size:13px;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right} th{background:#f3f3f3}
td:first-child,td:nth-child(2),td:nth-child(3){text-align:left}
.smoke{background:#fff3cd;border:1px solid #e0b000;padding:.6em 1em;margin:1em 0;font-weight:600}
.plots img{max-width:100%;margin:.3em 0}
.grids{display:flex;flex-wrap:wrap;gap:1.5em} figure{margin:0} figcaption{font-size:12px;max-width:300px}
.gridimg{image-rendering:pixelated;border:1px solid #999} ol{font-size:12px;margin:.3em 0 0 1.2em;padding:0}
code{background:#f3f3f3;padding:0 3px}
"""


def _img(path: Path, cls: str = "", alt: str = "") -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img class="{cls}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _tables(df) -> str:
    parts = []
    for (task, model), d in df.groupby(["task", "model"], sort=True):
        ns = sorted({int(n) for n in d["n_edits"]})
        head = "".join(f"<th>N={n}</th>" for n in ns)
        body = []
        for (label, subset, metric), g in d.groupby(["label", "subset", "metric"], sort=True):
            by_n = {int(r.n_edits): r.value for r in g.itertuples()}
            arrow = "↑" if bool(g["higher_is_better"].iloc[0]) else "↓"
            cells = "".join(f"<td>{'' if by_n.get(n) is None else f'{by_n[n]:.4g}'}</td>" for n in ns)
            body.append(f"<tr><td>{html.escape(label)}</td><td>{html.escape(subset)}</td>"
                        f"<td>{html.escape(metric)} {arrow}</td>{cells}</tr>")
        smoke = f" <small>({SMOKE_MARK})</small>" if d["smoke"].astype(bool).any() else ""
        parts.append(f"<h3>{html.escape(task)} on {html.escape(model)}{smoke}</h3><table><tr><th>editor</th>"
                     f"<th>subset</th><th>metric</th>{head}</tr>{''.join(body)}</table>")
    return "\n".join(parts)


def _run_section(run: Path) -> str:
    cfg_path, man_path = run / "config.json", run / "manifest.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    man = json.loads(man_path.read_text()) if man_path.is_file() else {}
    c = cfg.get("config", {})
    smoke = cfg.get("smoke") or run.name.endswith("-smoke")
    title = f"{c.get('editor', '?')} on {c.get('task', '?')} ({(cfg.get('model') or {}).get('spec', '?')})"
    out = [f"<h3>{html.escape(title)}{' — ' + SMOKE_MARK if smoke else ''}</h3>",
           f"<p>run <code>{html.escape(run.name)}</code>; mode {html.escape(str(c.get('mode')))}; "
           f"git {html.escape(str(cfg.get('git_revision')))}; iceb {html.escape(str(cfg.get('iceb_version')))}</p>"]
    figs = []
    grids = sorted((run / "grids").glob("n*.png"), key=lambda p: int(p.stem[1:])) if (run / "grids").is_dir() else []
    for g in grids:
        n = g.stem[1:]
        prompts = (man.get("edit_counts", {}).get(n) or {}).get("grid_prompts") or []
        items = "".join(f"<li>{html.escape(p)}</li>" for p in prompts)
        figs.append(f"<figure>{_img(g, 'gridimg', f'before/after N={n}')}<figcaption><b>N={n}</b>: left before, "
                    f"right after the edit; rows:<ol>{items}</ol></figcaption></figure>")
    out.append(f'<div class="grids">{"".join(figs)}</div>' if figs else "<p>(no grids in this run)</p>")
    return "\n".join(out)


def write_report(path: str | Path, df, markdown_text: str, plot_files: Sequence[Path], runs: Sequence[Path]) -> Path:
    """Write ``report.html``; returns its path."""
    from iceb.utils.io import write_text

    smoke = bool(df["smoke"].astype(bool).any()) if not df.empty else False
    panels = [p for p in plot_files if p.name.endswith("__panel.png")]
    singles = [p for p in plot_files if not p.name.endswith("__panel.png")]
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>ICEB report</title>",
             f"<style>{_CSS}</style></head><body><h1>ICEB report</h1>"]
    if smoke:
        parts.append(f'<div class="smoke">{SMOKE_MARK}: rows marked [SMOKE] come from --limit runs.</div>')
    parts.append(f"<p>{len(runs)} run(s), {len(df)} rows. Columns are explained in leaderboard/README.md.</p>")
    parts.append("<h2>Results</h2>" + _tables(df))
    if panels or singles:
        parts.append('<h2>Metrics vs number of edits</h2><div class="plots">')
        parts += [_img(p, alt=p.stem) for p in panels]
        if singles:
            parts.append("<details><summary>one plot per metric</summary>")
            parts += [_img(p, alt=p.stem) for p in singles]
            parts.append("</details>")
        parts.append("</div>")
    parts.append("<h2>Before / after</h2>")
    parts += [_run_section(r) for r in runs]
    parts.append("</body></html>")
    write_text(path, "\n".join(parts))
    return Path(path)
