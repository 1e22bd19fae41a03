"""The headline: the paper's panels per task, erasers only where their numbers mean something, the best value
per column marked (never the no-edit reference), bounds labelled by kind, and published CSVs as input."""
from __future__ import annotations

import pandas as pd

from iceb.leaderboard.headline import ERASER_NA, FLOOR_BOUNDS, bound_label, fmt_cell, headline_table, panels_for
from iceb.leaderboard.pivot import fmt, fmt_se


def _rows():
    rows = []
    values = {"emcid": 0.6, "uce": 0.8, "esd-x": 0.1, "noop": 0.0}
    for ed, v in values.items():
        for n in (1, 4):
            for p in panels_for("ace"):
                val = -0.5 * v if p.metric == "holdout_delta" else v
                rows.append({"editor": ed, "label": ed, "task": "ace", "model": "toy", "n_edits": n,
                             "subset": p.subset, "metric": p.metric, "value": val, "higher_is_better": True,
                             "stderr": None if n == 1 else 0.05, "n_groups": n, "bound": -0.9 if
                             p.metric == "holdout_delta" else 1.0, "smoke": False, "erase_only": ed == "esd-x"})
    return pd.DataFrame(rows)


def test_headline_table_marks_best_and_leaves_erasers_out_where_meaningless():
    t = headline_table(_rows(), "ace")
    assert t["panels"] == [p.title for p in panels_for("ace")] and len(t["panels"]) == 6
    rows = {r["label"]: r["cells"] for r in t["rows"]}
    assert list(rows)[-1] == "noop (reference: no edit)"  # the reference last
    cols = [(c["title"], c["n"]) for c in t["columns"]]
    s2d = cols.index(("Efficacy: Source2Dest", "N=4"))
    hold = cols.index(("Holdout Delta", "N=4"))
    forget = cols.index(("Efficacy: Source Forget", "N=4"))
    assert rows["esd-x"][s2d]["text"] == ERASER_NA and rows["esd-x"][forget]["text"] != ERASER_NA
    assert rows["uce"][s2d]["best"] and not rows["emcid"][s2d]["best"]
    # holdout: esd-x loses least of the editors (noop loses nothing but is the reference, never best)
    assert rows["esd-x"][hold]["best"] and not rows["noop (reference: no edit)"][hold]["best"]
    assert rows["uce"][s2d]["text"] == "0.800 ± 0.050"
    assert rows["uce"][cols.index(("Efficacy: Source2Dest", "N=1"))]["text"] == "0.800 ± (1 request)"


def test_cells_never_show_minus_zero_and_bounds_say_what_they_are():
    assert fmt(-0.0) == "0" and fmt(-1e-9) != "-0" and fmt_se(-0.0001, 0.05) == "0.000 ± 0.050"
    assert fmt_cell(-0.0001, 0.2) == "0.000 ± 0.200" and fmt_cell(0.5, 1e-5) == "0.500 ± <0.001"
    assert bound_label("holdout_delta") == "worst: all lost" and "holdout_delta" in FLOOR_BOUNDS
    assert bound_label("source2dest") == "best reachable"
    assert panels_for("my-own-task") == ()


def test_a_published_csv_rebuilds_the_same_leaderboard(tmp_path):
    from iceb.leaderboard.tables import build_leaderboard

    df = _rows()
    for c in ("mode", "world", "run_id", "run_hash", "iceb_version", "n"):
        df[c] = {"mode": "batch", "world": "toy", "run_id": "r-1", "run_hash": "1", "iceb_version": "0",
                 "n": 3}[c]
    df.to_csv(tmp_path / "in.csv", index=False)
    written = build_leaderboard([tmp_path / "in.csv"], tmp_path / "out", report=True)
    assert tmp_path / "out" / "plots" / "ace__toy__headline.png" in written
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert md.index("## ace on toy: headline") < md.index("# Appendix: every metric")
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.index("Efficacy: Source2Dest") < html.index("Appendix")  # the answer before the appendix
    back = pd.read_csv(tmp_path / "out" / "combined.csv")
    assert len(back) == len(df) and set(back["erase_only"]) == {True, False}
