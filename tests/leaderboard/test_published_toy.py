"""The published toy leaderboard (``leaderboard/toy/``) says what it used, and that is what ships: every editor's
rows come from its tuned ``toy`` preset (the record's hash in the rows is the shipped file's), all by the same
tuning budget, all on the test split."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from editors.hparams import HPARAMS_DIR, check_tuning_record, tuning_hash

ROOT = Path(__file__).resolve().parents[2]
BOARD = ROOT / "leaderboard" / "toy"
TUNED = ["uce", "time", "speed", "rome", "emcid", "emcid-ns", "esd-x", "esd-u", "mace"]


def _record(editor: str) -> dict | None:
    data = yaml.safe_load((HPARAMS_DIR / editor / "toy.yaml").read_text())
    return check_tuning_record(data["tuning"], editor) if "tuning" in data else None


@pytest.mark.parametrize("editor", TUNED)
def test_shipped_toy_presets_are_tuned_by_one_budget(editor):
    rec = _record(editor)
    assert rec is not None, f"{editor}'s toy preset carries no tuning record: run scripts/tune_toy.py --editors {editor}"
    assert rec["split"] == "dev" and rec["model"] == "toy" and rec["task"] == "ace"
    assert (rec["trials"], rec["edits"], rec["seed"]) == (12, [6], 0)
    assert rec["best_value"] >= rec["untuned_value"]  # never worse than the first guess on the dev split
    assert (HPARAMS_DIR / editor / "toy-untuned.yaml").is_file()  # the first guess stays reachable


def test_published_rows_cite_the_shipped_presets():
    from iceb.leaderboard.tables import csv_rows

    if not (BOARD / "combined.csv").is_file():
        pytest.skip("no published toy leaderboard")
    rows = csv_rows(BOARD / "combined.csv")
    assert rows and all(r["split"] == "test" for r in rows)
    assert {r["editor"] for r in rows} >= set(TUNED) | {"noop"}
    for editor in {r["editor"] for r in rows} - {"noop"}:
        rec = _record(editor)
        mine = [r for r in rows if r["editor"] == editor]
        assert {r["preset"] for r in mine} == {"toy"}, editor
        assert all(r["tuned"] for r in mine), editor
        assert {r["tuning_hash"] for r in mine} == {tuning_hash(rec)}, f"{editor}: re-measure leaderboard/toy"
