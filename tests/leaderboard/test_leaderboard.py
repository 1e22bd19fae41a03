"""Leaderboard outputs from small runs: CSV columns, Markdown, plots, HTML with grids, smoke marks."""
from __future__ import annotations

import base64
import re

import pandas as pd
import pytest


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    from iceb.harness import EvalConfig, evaluate

    out = tmp_path_factory.mktemp("runs")
    common = {"task": "smoke", "model": "tiny", "edits": (1, 3), "out": str(out), "device": "cpu", "progress": False,
              "batch_size": 8}
    full = evaluate(EvalConfig(editor="test_harness:ScaleVEditor", **common), model=tiny_model)
    smoke = evaluate(EvalConfig(editor="noop", limit=2, **common), model=tiny_model)
    return out, full, smoke


def test_leaderboard_files_and_columns(runs, tmp_path):
    from iceb.cli import main
    from iceb.leaderboard.results import read_rows
    from iceb.leaderboard.schema import LEADERBOARD_COLUMNS

    out, full, smoke = runs
    assert main(["leaderboard", str(out), "--out", str(tmp_path)]) == 0
    combined = pd.read_csv(tmp_path / "combined.csv")
    assert list(combined.columns) == LEADERBOARD_COLUMNS
    per_task = pd.read_csv(tmp_path / "smoke.csv")
    assert len(per_task) == len(combined) == len(read_rows(full / "results.jsonl")) + len(read_rows(smoke / "results.jsonl"))
    # values are the run's rows, untouched; provenance filled in
    assert set(combined.run_id) == {full.name, smoke.name}
    assert combined.versions.str.contains("torch=").all() and combined.data_hash.notna().all()
    s = combined[combined.run_id == smoke.name]
    assert s.smoke.all() and s.label.str.contains(r"\[SMOKE\]").all()
    assert (s[s.metric == "image_change"].value == 0).all()  # noop
    assert not combined[combined.run_id == full.name].smoke.any()

    md = (tmp_path / "leaderboard.md").read_text()
    assert "SMOKE (--limit): not comparable" in md and "| edit | image_change ↑ | noop [SMOKE] |" in md
    header = next(line for line in md.splitlines() if line.startswith("| subset"))
    assert header.endswith("| N=1 | N=3 |")  # metric-major appendix: the editors of one metric together

    plots = sorted((tmp_path / "plots").glob("*.png"))
    names = {p.name for p in plots}
    assert "smoke__tiny__edit__image_change.png" in names
    assert not any(n.endswith("__headline.png") for n in names)  # the smoke task has no headline panels
    from PIL import Image

    with Image.open(tmp_path / "plots" / "smoke__tiny__edit__image_change.png") as im:
        assert im.size[0] > 300 and im.size[1] > 200

    html = (tmp_path / "report.html").read_text()
    assert "SMOKE (--limit): not comparable" in html
    assert re.search(r"<li>cat → [^<]*: An image of cat</li>", html)  # grid rows say which concept became which
    assert "<li>holdout (should not change): " in html
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(imgs) == len(plots) + 4  # every plot plus two grids (N=1, N=3) per run
    assert all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in imgs)


def test_grid_png_is_before_after_pairs(runs):
    import json

    import numpy as np
    from PIL import Image

    _, full, _ = runs
    man = json.loads((full / "manifest.json").read_text())
    rows = len(man["edit_counts"]["3"]["grid"])
    assert rows == 3 + 2  # three edited concepts, then two holdout prompts
    with Image.open(full / "grids" / "n3.png") as im:
        grid = np.asarray(im.convert("RGB"))
    assert grid.shape == (rows * 128, 256, 3)
    left, right = grid[:, :128], grid[:, 128:]
    assert not np.array_equal(left[:3 * 128], right[:3 * 128])  # the edit changed the edited concepts' images


def test_leaderboard_without_runs_is_a_clear_error(tmp_path):
    from iceb.leaderboard.tables import build_leaderboard

    with pytest.raises(FileNotFoundError, match="no run folders"):
        build_leaderboard([tmp_path], tmp_path / "lb")


def _row(**kw):
    row = {"editor": "noop", "model": "tiny", "task": "smoke", "world": "imagenet", "n_edits": 1, "mode": "batch", "subset": "edit",
               "metric": "image_change", "value": 0.0, "bound": None, "n": 2, "higher_is_better": True, "smoke": True,
               "run_id": "noop-smoke-0123456789ab-smoke", "iceb_version": "0.1.0"}
    return {**row, **kw}


def test_read_rows_derives_the_run_hash_of_older_rows_and_refuses_bad_ones(tmp_path):
    from iceb.leaderboard.results import append_block, read_rows
    from iceb.leaderboard.schema import ROW_COLUMNS

    path = tmp_path / "results.jsonl"
    append_block(path, [_row(), _row(smoke=False, run_id="noop-smoke-ba9876543210")], {"key": "n1", "block": "b1"})
    rows = read_rows(path)
    assert [list(r) for r in rows] == [ROW_COLUMNS] * 2
    assert [r["run_hash"] for r in rows] == ["0123456789ab", "ba9876543210"]
    append_block(path, [_row(run_hash="given")], {"key": "n2", "block": "b2"})
    assert read_rows(path)[-1]["run_hash"] == "given"
    append_block(path, [_row(n_edits="3")], {"key": "n3", "block": "b3"})
    with pytest.raises(ValueError, match=r"results.jsonl:6: n_edits is '3' \(str\), expected int"):
        read_rows(path)
    bad = tmp_path / "missing.jsonl"
    append_block(bad, [{k: v for k, v in _row().items() if k != "metric"}], {"key": "n1", "block": "b1"})
    with pytest.raises(ValueError, match=r"missing.jsonl:1: lacks metric"):
        read_rows(bad)
