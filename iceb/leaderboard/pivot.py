"""The one pivot behind the leaderboard's tables: ``leaderboard.md`` and ``report.html`` render the same frame.

Rows are (task, model, legend label, subset, metric), columns the edit counts (``N=1``, ``N=3``, ...), so a
reader follows one editor's metric along N.
"""
from __future__ import annotations

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
        increasing order (NaN where a row has no value at that N).
    """
    import pandas as pd

    keys = ["task", "model", "label", "subset", "metric"]
    ns = sorted({int(n) for n in df["n_edits"]})
    records = []
    for key, g in df.groupby(keys, sort=True):
        by_n = {int(r.n_edits): r.value for r in g.itertuples()}
        bounds = {r.bound for r in g.itertuples() if r.bound is not None and r.bound == r.bound}
        bound = next(iter(bounds)) if len(bounds) == 1 else ("varies" if bounds else None)
        records.append({**dict(zip(keys, key)), "higher_is_better": bool(g["higher_is_better"].iloc[0]),
                        "bound": bound, "smoke": bool(g["smoke"].astype(bool).any()),
                        **{f"N={n}": by_n.get(n, float("nan")) for n in ns}})
    return pd.DataFrame(records, columns=keys + PIVOT_META + [f"N={n}" for n in ns]).set_index(keys)


def pivot_tables(df):
    """One :func:`pivot` per (task, model), with only the edit counts that task and model have.

    Args:
        df: leaderboard rows (:func:`iceb.leaderboard.tables.frame`).

    Returns:
        A list of ``(task, model, table)``, sorted by task and model; each table is indexed by
        (label, subset, metric).
    """
    return [(task, model, pivot(d).droplevel(["task", "model"]))
            for (task, model), d in df.groupby(["task", "model"], sort=True)]


def n_columns(table) -> list[str]:
    """The ``N=<n>`` columns of a :func:`pivot` table, in order."""
    return [c for c in table.columns if c not in PIVOT_META]


def arrow(higher_is_better: bool) -> str:
    """The direction mark the tables put after a metric's name."""
    return "↑" if higher_is_better else "↓"


def fmt(v: Any) -> str:
    """A table cell: 4 significant digits, empty for a missing value."""
    if v is None or (isinstance(v, float) and v != v):
        return ""
    return f"{v:.4g}" if isinstance(v, (int, float)) else str(v)
