"""The one pivot behind the leaderboard's tables: ``leaderboard.md`` and ``report.html`` render the same frame.

Rows are (task, model, legend label, subset, metric), columns the edit counts (``N=1``, ``N=3``, ...), so a
reader follows one editor's metric along N. Each ``N=<n>`` column has a ``SE N=<n>`` twin holding the value's
standard error (requests as clusters; NaN where the row has none); :func:`cell` writes the two as
``0.473 ± 0.051``.
"""
from __future__ import annotations

import math
from typing import Any

#: the columns :func:`pivot` gives besides one ``N=<n>`` column per edit count
PIVOT_META = ["higher_is_better", "bound", "smoke"]


def pivot(df):
    """Editors x edit counts, the table that ``leaderboard.md`` and ``report.html`` both show.

    Args:
        df: leaderboard rows (:func:`iceb.leaderboard.tables.frame`), of any number of tasks and models.

    Returns:
        A DataFrame indexed by (task, model, label, subset, metric), sorted, with the columns
        :data:`PIVOT_META` (``bound``: the one bound of the row's values, ``"varies"`` or None; ``smoke``:
        whether the row comes from a ``--limit`` run) followed by one ``N=<n>`` column per edit count in
        increasing order (NaN where a row has no value at that N), then one ``SE N=<n>`` column per edit
        count (the value's standard error; NaN where unknown).
    """
    import pandas as pd

    keys = ["task", "model", "label", "subset", "metric"]
    ns = sorted({int(n) for n in df["n_edits"]})
    records = []
    for key, g in df.groupby(keys, sort=True):
        by_n = {int(r.n_edits): r.value for r in g.itertuples()}
        se_n = {int(r.n_edits): _num(getattr(r, "stderr", None)) for r in g.itertuples()}
        bounds = {r.bound for r in g.itertuples() if r.bound is not None and r.bound == r.bound}
        bound = next(iter(bounds)) if len(bounds) == 1 else ("varies" if bounds else None)
        records.append({**dict(zip(keys, key)), "higher_is_better": bool(g["higher_is_better"].iloc[0]),
                        "bound": bound, "smoke": bool(g["smoke"].astype(bool).any()),
                        **{f"N={n}": by_n.get(n, float("nan")) for n in ns},
                        **{f"{SE_PREFIX}N={n}": se_n.get(n, float("nan")) for n in ns}})
    columns = keys + PIVOT_META + [f"N={n}" for n in ns] + [f"{SE_PREFIX}N={n}" for n in ns]
    return pd.DataFrame(records, columns=columns).set_index(keys)


#: the prefix of a pivot's standard-error columns (``SE N=3`` beside ``N=3``)
SE_PREFIX = "SE "


def _num(v: Any) -> float:
    """A float, NaN for None or anything that is not a number."""
    try:
        return float(v) if v is not None else float("nan")
    except (TypeError, ValueError):
        return float("nan")


def pivot_tables(df):
    """One :func:`pivot` per (task, model), with only the edit counts that task and model have.

    Args:
        df: leaderboard rows (:func:`iceb.leaderboard.tables.frame`).

    Returns:
        A list of ``(task, model, table)``, sorted by task and model; each table is indexed by
        (subset, metric, label) — metric-major, so the editors of one metric sit together.
    """
    return [(task, model, pivot(d).droplevel(["task", "model"]).reorder_levels(["subset", "metric", "label"])
             .sort_index(kind="stable"))
            for (task, model), d in df.groupby(["task", "model"], sort=True)]


def n_columns(table) -> list[str]:
    """The ``N=<n>`` columns of a :func:`pivot` table, in order (not their ``SE`` twins)."""
    return [c for c in table.columns if c not in PIVOT_META and not str(c).startswith(SE_PREFIX)]


def arrow(higher_is_better: bool) -> str:
    """The direction mark the tables put after a metric's name."""
    return "↑" if higher_is_better else "↓"


def fmt(v: Any) -> str:
    """A table cell: 4 significant digits, empty for a missing value."""
    if v is None or (isinstance(v, float) and v != v):
        return ""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        text = f"{v:.4g}"
        return "0" if text in ("-0", "-0.0") else text  # no "-0" cells
    return str(v)


def fmt_se(v: Any, se: Any) -> str:
    """``value ± SE``: the SE to 2 significant digits and the value to the same decimal place; the plain
    :func:`fmt` of the value when the SE is unknown (None or NaN)."""
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        return fmt(v)
    se = _num(se)
    if not math.isfinite(se) or not math.isfinite(float(v)):
        return fmt(v)
    if se == 0:
        return f"{fmt(v)} ± 0"
    decimals = min(12, max(0, 1 - math.floor(math.log10(abs(se)))))
    text = f"{float(v):.{decimals}f}"
    if text.startswith("-") and float(text) == 0:  # "-0.00": rounding, not a sign
        text = text[1:]
    return f"{text} ± {se:.{decimals}f}"


def cell(row: Any, n_column: str) -> str:
    """The cell of a :func:`pivot` row at edit-count column ``n_column``: ``value ± SE``, or the plain value."""
    return fmt_se(row[n_column], row.get(SE_PREFIX + n_column))
