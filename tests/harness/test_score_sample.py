"""``--score-requests K``: every request edited, a fixed sample of K scored, and the rows say so."""
from __future__ import annotations

import pytest

from iceb.harness.config import EvalConfig


def test_score_requests_is_in_the_run_id_only_when_set_and_must_be_positive():
    base = EvalConfig(editor="uce", task="ace", model="tiny")
    assert "score_requests" not in base.identity()
    assert EvalConfig(editor="uce", task="ace", model="tiny", score_requests=200).identity()["score_requests"] == 200
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="--score-requests"):
            EvalConfig(editor="uce", task="ace", score_requests=bad).validate()


def test_a_toy_run_edits_all_requests_and_scores_the_sample(tmp_path):
    from iceb.harness import evaluate
    from iceb.leaderboard.results import read_rows
    from iceb.models import toy_quality_passed
    from iceb.tasks import get_task

    if not toy_quality_passed():
        pytest.skip("no toy world here")
    run = evaluate(EvalConfig(editor="uce", task="ace", model="toy", edits=(4,), score_requests=2, out=str(tmp_path),
                              device="cpu", progress=False, metrics=("iceb-cls",)))
    rows = [r for r in read_rows(run / "results.jsonl") if r["subset"] in ("edit", "general", "holdout")]
    ids = get_task("ace", world="toy", score_requests=2).build(4).info["scored_requests"]
    assert len(ids) == 2
    from iceb.utils.hashing import stable_hash

    label = f"2 of 4, ids {stable_hash('scored-requests', ids)}"
    assert rows and all(r["scored_requests"] == label for r in rows)
    edit = [r for r in rows if r["subset"] == "edit" and r["metric"] == "source2dest"]
    assert edit and edit[0]["n"] == 2 * 3 and edit[0]["n_groups"] == 2  # 2 requests x 3 templates
    holdout = [r for r in rows if r["subset"] == "holdout"]
    assert holdout and max(r["n"] for r in holdout) == 16 * 3  # the whole holdout, always
    import json

    sidecar = json.loads((run / "edits" / "n4.safetensors.json").read_text())
    assert sidecar["n_requests"] == 4  # the edit itself covered all four
