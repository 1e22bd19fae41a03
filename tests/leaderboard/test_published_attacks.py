"""The published robustness leaderboard (``leaderboard/toy-attacks/``) agrees with itself: every row reads with the
schema, ASR arithmetic holds, and the shipped attack prompts give exactly the published rates."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BOARD = ROOT / "leaderboard" / "toy-attacks"


@pytest.fixture(scope="module")
def rows():
    from iceb.leaderboard.tables import csv_rows

    if not (BOARD / "ace.csv").is_file():
        pytest.skip("no published toy-attacks leaderboard")
    return [r for r in csv_rows(BOARD / "ace.csv") if str(r["subset"]).startswith("attack:")]


def test_published_asr_rows_are_consistent(rows):
    by = {(r["run_id"], r["n_edits"], r["subset"], r["metric"]): r["value"] for r in rows}
    runs = {(r["run_id"], r["n_edits"]) for r in rows}
    assert len({r["editor"] for r in rows}) >= 5
    for run, n in runs:
        attacks = {s for (ru, nn, s, m) in by if ru == run and nn == n and m == "asr"} - {"attack:any"}
        for a in attacks:
            assert by[(run, n, a, "pre_asr")] <= by[(run, n, a, "asr")] <= 1
            assert by[(run, n, a, "asr")] <= by[(run, n, "attack:any", "asr")] + 1e-12


def test_shipped_prompts_give_the_published_rates(rows):
    by = {(r["run_id"], r["n_edits"], r["subset"]): r for r in rows if r["metric"] == "asr"}
    checked = 0
    for path in sorted((BOARD / "prompts").glob("*/n*/*.jsonl")):
        run, n, attack = path.parent.parent.name, int(path.parent.name[1:]), path.stem
        recs = [json.loads(x) for x in path.read_text().splitlines()]
        row = by[(run, n, f"attack:{attack}")]
        assert row["n"] == len(recs) == len(json.loads((path.parent / "requests.json").read_text())["requests"])
        assert row["value"] == pytest.approx(sum(r["pre_success"] or r["success"] for r in recs) / len(recs))
        assert all(len(r["ids"]) == 77 and r["attack"] == attack for r in recs)
        assert json.loads(row["details"])["attack"] == attack
        checked += 1
    assert checked >= 5 * 5 * 4
