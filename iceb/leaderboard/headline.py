"""The answer first: the paper's headline metrics as one table and one six-panel figure per task and model.

EMCID's summary figure (``shared/reference/emcid_aice_summary.png``) draws six panels for arbitrary concept
editing — Holdout Delta, Efficacy and Generalization × (Source Forget, Source2Dest), Alias2Dest — with fixed
y ranges and one legend; rectification has its own four (Holdout Delta, Rectify Gain on the edit, free-form
and alias prompts). :data:`HEADLINE` names them; everything else is the appendix.

- **Erase-only editors** (ESD: they take no destination) appear only where their numbers mean something: the
  Forget and Holdout panels. Elsewhere the table says ``n/a (eraser)`` and the figure leaves them out.
- **Bounds** are drawn once per panel, labelled by what they are: for most panels the best value reachable
  (everything forgotten, every image the destination; dashed), for Holdout Delta and Dest Forget the *worst*
  (every holdout or destination concept lost; dotted); they come from the unedited model, so every editor shares
  them.
- **Best per column**: the highest (or, for lower-is-better metrics, the lowest) value among the editors that
  the column means something for, marked ``**bold**`` in Markdown and shaded in HTML; ties are all marked; the
  reference row (``noop``: no edit) is shown last and never marked.
- **Cells** are ``value ± SE`` (requests as clusters) with three decimals; a value resting on one request has
  no SE and says so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Panel:
    subset: str
    metric: str
    title: str
    ylim: tuple[float, float]
    for_erasers: bool  # does the number mean something for an editor that takes no destination?


_SCORE = (-0.1, 1.05)
HEADLINE: dict[str, tuple[Panel, ...]] = {
    "ace": (
        Panel("holdout", "holdout_delta", "Holdout Delta", (-1.0, 0.1), True),
        Panel("edit", "source_forget", "Efficacy: Source Forget", _SCORE, True),
        Panel("edit", "source2dest", "Efficacy: Source2Dest", _SCORE, False),
        Panel("general", "source_forget", "Generalization: Source Forget", _SCORE, True),
        Panel("general", "source2dest", "Generalization: Source2Dest", _SCORE, False),
        Panel("alias", "alias2dest", "Alias2Dest", _SCORE, False),
    ),
    "rectification": (
        Panel("holdout", "holdout_delta", "Holdout Delta", (-1.0, 0.1), True),
        Panel("edit", "rectify_gain", "Efficacy: Rectify Gain", _SCORE, False),
        Panel("general", "rectify_gain", "Generalization: Rectify Gain", _SCORE, False),
        Panel("edit_dest", "dest_forget", "Dest Forget", (-0.1, 1.05), True),
    ),
}
#: editors that edit nothing: a reference row, shown last and never marked best
REFERENCE_EDITORS = frozenset({"noop"})
#: metrics whose bound is the worst value, not the best (the unedited model's probability lost entirely)
FLOOR_BOUNDS = frozenset({"holdout_delta", "dest_forget"})
ERASER_NA = "n/a (eraser)"


def panels_for(task: str) -> tuple[Panel, ...]:
    """The headline panels of a task (``()`` for a task without any, e.g. a user task of other metrics)."""
    return HEADLINE.get(task, ())


#: attack success rates: their bound is the unedited model's rate (nothing erased), the worst an edit can do
ATTACK_BOUNDS = frozenset({"asr", "pre_asr"})


def bound_style(metric: str) -> str:
    """Dashed for a best-reachable bound, dotted for a worst one: the two read apart in one legend."""
    return ":" if metric in FLOOR_BOUNDS or metric in ATTACK_BOUNDS else "--"


def bound_label(metric: str) -> str:
    if metric in ATTACK_BOUNDS:
        return "unedited model"
    return "worst: all lost" if metric in FLOOR_BOUNDS else "best reachable"


def fmt_cell(value: float, se: Any, n_groups: Any = None) -> str:
    """A headline cell: three decimals (scores live in [-1, 1]), ``± SE`` where there is one, and the reason
    where there is none (one request: no spread to measure)."""
    v = f"{value:.3f}"
    v = v[1:] if v.startswith("-") and float(v) == 0 else v
    try:
        se = float(se)
    except (TypeError, ValueError):
        se = float("nan")
    if math.isfinite(se):
        return f"{v} ± {se:.3f}" if se >= 0.0005 else f"{v} ± <0.001"
    try:
        one = int(n_groups) == 1
    except (TypeError, ValueError):
        one = False
    return f"{v} ± (1 request)" if one else v


def erase_only_labels(d) -> dict[str, bool]:
    if "erase_only" not in d.columns:
        return {}
    return {lab: bool(g["erase_only"].fillna(False).astype(bool).any()) for lab, g in d.groupby("label")}


def headline_table(d, task: str) -> dict[str, Any] | None:
    """The headline table of one (task, model) frame: editors × (panel, N) with ``value ± SE`` cells.

    Args:
        d: Leaderboard rows of one task and model.
        task: Its task name (selects the panels).

    Returns:
        ``{"columns": [(panel title, arrow, "N=n")...], "rows": [{"label", "cells": [{"text", "best"}]}]}``,
        or None when the task has no headline panels or none of them is in the rows.
    """
    panels = [p for p in panels_for(task) if ((d["subset"] == p.subset) & (d["metric"] == p.metric)).any()]
    if not panels:
        return None
    ns = sorted({int(n) for n in d["n_edits"]})
    erasers = erase_only_labels(d)
    labels = sorted(d["label"].unique(), key=lambda lab: (_editor(d, lab) in REFERENCE_EDITORS, lab))
    columns, grid = [], {lab: [] for lab in labels}
    for p in panels:
        sel = d[(d["subset"] == p.subset) & (d["metric"] == p.metric)]
        hib = bool(sel["higher_is_better"].iloc[0])
        for n in ns:
            at = sel[sel["n_edits"] == n].set_index("label")
            columns.append({"title": p.title, "arrow": "↑" if hib else "↓", "n": f"N={n}"})
            vals = {}
            for lab in labels:
                if lab not in at.index:
                    grid[lab].append({"text": "", "best": False})
                    continue
                if erasers.get(lab) and not p.for_erasers:
                    grid[lab].append({"text": ERASER_NA, "best": False})
                    continue
                r = at.loc[lab]
                if hasattr(r, "ndim") and r.ndim > 1:  # duplicate labels: first row
                    r = r.iloc[0]
                if _editor(d, lab) not in REFERENCE_EDITORS:
                    vals[lab] = round(float(r["value"]), 3)  # as shown: equal cells tie
                grid[lab].append({"text": fmt_cell(float(r["value"]), r.get("stderr"), r.get("n_groups")),
                                  "best": False})
            if vals:
                best = max(vals.values()) if hib else min(vals.values())
                for lab, v in vals.items():
                    if v == best and len(vals) > 1:
                        grid[lab][-1]["best"] = True
    return {"columns": columns, "panels": [p.title for p in panels], "ns": [f"N={n}" for n in ns],
            "rows": [{"label": lab + (" (reference: no edit)" if _editor(d, lab) in REFERENCE_EDITORS else ""),
                      "cells": grid[lab]} for lab in labels]}


def _editor(d, label: str) -> str:
    return str(d.loc[d["label"] == label, "editor"].iloc[0])


def headline_markdown(table: dict[str, Any]) -> list[str]:
    """The headline table as Markdown lines (best values in bold)."""
    head = ["editor"] + [f"{c['title']} {c['arrow']} {c['n']}" for c in table["columns"]]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---|" * len(table["columns"])]
    for r in table["rows"]:
        cells = [f"**{c['text']}**" if c["best"] else c["text"] for c in r["cells"]]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return lines


__all__ = ["ERASER_NA", "FLOOR_BOUNDS", "HEADLINE", "Panel", "bound_label", "bound_style", "headline_markdown",
           "headline_table", "panels_for", "erase_only_labels"]
