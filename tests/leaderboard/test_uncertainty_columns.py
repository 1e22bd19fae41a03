"""The uncertainty columns: older rows without them still read; tables write ``value ± SE``; plots draw bands."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from iceb.leaderboard.schema import OPTIONAL_COLUMNS, ROW_COLUMNS, ResultRow, check_row

OLD_ROW = {"editor": "uce", "model": "toy", "task": "ace", "world": "toy", "n_edits": 1, "mode": "batch",
           "subset": "edit", "metric": "source2dest", "value": 0.5, "bound": 0.9, "n": 3, "higher_is_better": True,
           "smoke": False, "run_id": "uce-ace-0123456789abcdef", "run_hash": "0123456789abcdef",
           "iceb_version": "0.1.0"}


def test_the_new_fields_are_last_and_optional():
    # the uncertainty fields, then where the edit came from (--editor file:PATH), then the split and the preset
    # that made the row (iceb tune), then the scored sample of requests (--score-requests), all optional
    assert ROW_COLUMNS[-12:] == ["stderr", "ci_low", "ci_high", "n_groups", "external", "sidecar",
                                 "details", "split", "preset", "tuned", "tuning_hash",
                                 "scored_requests"] == OPTIONAL_COLUMNS


def test_rows_written_before_the_uncertainty_fields_still_read(tmp_path):
    from iceb.leaderboard.results import read_rows

    for row in (ResultRow.from_dict(OLD_ROW), check_row(OLD_ROW)):
        assert (row.stderr, row.ci_low, row.ci_high, row.n_groups) == (None, None, None, None)
    assert check_row({**OLD_ROW, "stderr": 0.1, "ci_low": 0.3, "ci_high": 0.7}).stderr == 0.1
    with pytest.raises(ValueError, match="stderr"):
        check_row({**OLD_ROW, "stderr": "small"})
    with pytest.raises(ValueError, match="lacks value"):
        check_row({k: v for k, v in OLD_ROW.items() if k != "value"})
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({**OLD_ROW, "kind": "result", "block": "b"}) + "\n"
                    + json.dumps({"kind": "done", "block": "b", "key": "n1"}) + "\n")
    (r,) = read_rows(path)
    assert list(r) == ROW_COLUMNS and r["stderr"] is None and r["value"] == 0.5


def test_cells_show_value_plus_minus_stderr_where_known():
    from iceb.leaderboard.pivot import cell, fmt_se, n_columns, pivot

    assert fmt_se(0.47312, 0.0512) == "0.473 ± 0.051"
    assert fmt_se(31.234, 1.23) == "31.2 ± 1.2"
    assert fmt_se(0.5, None) == fmt_se(0.5, float("nan")) == "0.5"
    assert fmt_se(float("nan"), 0.1) == ""
    rows = [{**OLD_ROW, "label": "uce", "n_edits": 1, "stderr": 0.0512},
            {**OLD_ROW, "label": "uce", "n_edits": 3, "value": 0.25, "stderr": None}]
    t = pivot(pd.DataFrame(rows))
    assert n_columns(t) == ["N=1", "N=3"]
    r = t.iloc[0]
    assert cell(r, "N=1") == "0.500 ± 0.051" and cell(r, "N=3") == "0.25"


def test_plots_draw_a_band_where_the_interval_is_known():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    from iceb.leaderboard.plots import draw_lines as _draw

    d = pd.DataFrame([{"label": "uce", "n_edits": n, "value": v, "bound": None, "ci_low": v - 0.1,
                       "ci_high": v + 0.1} for n, v in ((1, 0.5), (3, 0.6), (10, 0.7))])
    fig, ax = plt.subplots()
    _draw(ax, d, {"uce": "C0"})
    assert any(isinstance(c, PolyCollection) for c in ax.collections)
    fig2, ax2 = plt.subplots()
    _draw(ax2, d.assign(ci_low=None, ci_high=None), {"uce": "C0"})
    assert not ax2.collections  # no interval: no band
    plt.close(fig)
    plt.close(fig2)
