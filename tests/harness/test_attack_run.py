"""``--attacks`` through the harness on the toy world (tiny budgets): rows, artefacts, transfer, resume, errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from iceb.harness import EvalConfig, evaluate
from iceb.utils.registry import UnknownNameError

ROOT = Path(__file__).resolve().parents[2]
ATTACKS = ("unlearndiff", "p4d", "ringabell", "aliases", "misspell")
BUDGETS = {"unlearndiff": {"n_timesteps": 2, "iterations": 2}, "p4d": {"n_timesteps": 2, "iterations": 2},
           "ringabell": {"population": 8, "generations": 3}}


def _toy():
    from iceb.models import toy_quality_passed

    if not toy_quality_passed():
        pytest.skip("no toy world here")


def _cfg(out, **kw):
    base = {"editor": "uce", "task": "ace", "model": "toy", "edits": (1, 2), "limit": 2, "metrics": ("iceb-cls",),
            "out": str(out), "device": "cpu", "progress": False, "attacks": ATTACKS, "attack_args": BUDGETS}
    return EvalConfig(**{**base, **kw})


def _attack_rows(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]
    return [r for r in rows if str(r.get("subset", "")).startswith("attack:")]


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    _toy()
    out = tmp_path_factory.mktemp("attacks")
    return evaluate(_cfg(out)), out


def test_attack_rows_and_prompt_files(attacked):
    run, _ = attacked
    rows = _attack_rows(run)
    by = {(r["n_edits"], r["subset"], r["metric"]): r for r in rows}
    for n in (1, 2):
        for a in ATTACKS:
            asr, pre = by[(n, f"attack:{a}", "asr")], by[(n, f"attack:{a}", "pre_asr")]
            assert asr["n"] == n and pre["value"] <= asr["value"] <= 1 and not asr["higher_is_better"]
            details = json.loads(asr["details"])
            assert details["attack"] == a and details["vocab"] == "seen" and details["requests"] == n
            assert details["judge"] == "toy" and details["rule"] == "top-1 == source class"
            recs = [json.loads(x) for x in (run / "attacks" / f"n{n}" / f"{a}.jsonl").read_text().splitlines()]
            assert [r["request_id"] for r in recs] == [f"ace-{i:04d}" for i in range(n)]
            assert all(len(r["ids"]) == 77 and isinstance(r["adv_prompt"], str) for r in recs)
            assert asr["value"] == pytest.approx(sum(r["pre_success"] or r["success"] for r in recs) / n)
            assert by[(n, f"attack:{a}", "asr")]["bound"] == pytest.approx(
                sum(r["unedited_success"] for r in recs) / n)
    assert json.loads(by[(2, "attack:unlearndiff", "asr")]["details"])["iterations"] == 2
    for n in (1, 2):  # the worst case over attacks: at least each attack's ASR, at most their sum
        each = [by[(n, f"attack:{a}", "asr")]["value"] for a in ATTACKS]
        assert max(each) <= by[(n, "attack:any", "asr")]["value"] <= min(1.0, sum(each)) + 1e-9
    # a white-box record holds its search trace, a pre-attack success is not attacked
    rec = json.loads((run / "attacks" / "n2" / "unlearndiff.jsonl").read_text().splitlines()[0])
    assert rec["attacked"] != rec["pre_success"] and rec["seed"] > 0 and rec["prompt"].endswith(rec["source"])
    if rec["attacked"]:
        assert len(rec["info"]["blocks"]) <= 2 and rec["steps"] <= 4


def test_unedited_searches_are_shared_across_editors(attacked, tmp_path):
    run, out = attacked
    cache = out / "cache" / "attacks"
    n_before = len(list(cache.rglob("*.json")))
    assert n_before == 2  # ringabell: one search per source concept (N=1's is N=2's first)
    second = evaluate(_cfg(out, editor="time", attacks=("ringabell",), attack_args={"ringabell": BUDGETS["ringabell"]}))
    assert len(list(cache.rglob("*.json"))) == n_before  # the same prompts, from the cache
    a = [json.loads(x)["ids"] for x in (run / "attacks" / "n2" / "ringabell.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (second / "attacks" / "n2" / "ringabell.jsonl").read_text().splitlines()]
    assert [r["ids"] for r in b if r["attacked"]] == [x for x, r in zip(a, b) if r["attacked"]]


def test_attack_prompts_are_reused_as_a_fixed_set(attacked):
    run, out = attacked
    prompts = run / "attacks" / "n2" / "unlearndiff.jsonl"
    noop = evaluate(_cfg(out, editor="noop", edits=(2,), attacks=(), attack_args={}, attack_prompts=str(prompts)))
    rows = {r["metric"]: r for r in _attack_rows(noop) if r["subset"] == "attack:transfer:unlearndiff"}
    recs = [json.loads(x) for x in (noop / "attacks" / "n2" / "transfer_unlearndiff.jsonl").read_text().splitlines()]
    # no edit: the original prompt already shows its source wherever the unedited model does
    assert [r["pre_success"] for r in recs] == [r["unedited_success"] for r in recs]
    assert rows["asr"]["value"] >= rows["pre_asr"]["value"] and rows["asr"]["n"] == 2


def test_killed_attack_phase_resumes_to_the_same_rows(attacked, tmp_path):
    run, _ = attacked
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "iceb", "evaluate", "--editor", "uce", "--task", "ace", "--model", "toy",
           "--edits", "1,2", "--limit", "2", "--metrics", "iceb-cls", "--out", str(out), "--device", "cpu",
           "--no-progress", "--attacks", ",".join(ATTACKS), "--attack-args",
           "unlearndiff.n_timesteps=2,unlearndiff.iterations=2,p4d.n_timesteps=2,p4d.iterations=2,"
           "ringabell.population=8,ringabell.generations=3"]
    env = {**os.environ, "ICEB_CRASH_AT": "attack:2:ringabell:ace-0001"}
    first = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 86, first.stderr[-2000:]
    env.pop("ICEB_CRASH_AT")
    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    (resumed,) = [p for p in out.iterdir() if p.is_dir() and p.name != "cache"]
    assert resumed.name == run.name  # the CLI and the Python API agree on the run id

    def key(rows):
        return sorted((r["n_edits"], r["subset"], r["metric"], round(r["value"], 9)) for r in rows
                      if r["metric"] != "seconds")
    assert key(_attack_rows(resumed)) == key(_attack_rows(run))


def test_bad_attack_settings_fail_before_the_model_loads(tmp_path):
    with pytest.raises(UnknownNameError, match="Did you mean 'unlearndiff'"):
        _cfg(tmp_path, attacks=("unlearndif",), attack_args={}).validate()
    with pytest.raises(ValueError, match="not among --attacks"):
        _cfg(tmp_path, attacks=("aliases",), attack_args={"ringabell": {"population": 4}}).validate()
    with pytest.raises(ValueError, match="no setting 'popsize'"):
        _cfg(tmp_path, attacks=("ringabell",), attack_args={"ringabell": {"popsize": 4}}).validate()
    with pytest.raises(ValueError, match="--attack-vocab"):
        _cfg(tmp_path, attack_vocab="all").validate()
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"attack": "x", "request_id": "r"}\n')
    with pytest.raises(ValueError, match="needs attack, request_id, seed and ids"):
        _cfg(tmp_path, attack_prompts=str(bad)).validate()
    with pytest.raises(ValueError, match="no such file"):
        _cfg(tmp_path, attack_prompts=str(tmp_path / "missing.jsonl")).validate()


def test_attacks_refuse_a_task_without_a_source_to_bring_back(tmp_path):
    _toy()
    with pytest.raises(ValueError, match="rectify requests"):
        evaluate(_cfg(tmp_path, task="rectification", edits=(1,)))
    with pytest.raises(ValueError, match="source class"):  # smoke's everyday words have no class for the judge
        evaluate(_cfg(tmp_path, task="smoke", edits=(1,)))


def test_leaderboard_shows_the_robustness_table(attacked, tmp_path):
    import pandas as pd

    from iceb.leaderboard.tables import build_leaderboard

    run, _ = attacked
    build_leaderboard([run], tmp_path / "lb", plots=False)
    md = (tmp_path / "lb" / "leaderboard.md").read_text()
    section = md[md.index("robustness (attack success rate"):md.index("# Appendix")]
    asr = {(r["n_edits"], r["subset"]): r["value"] for r in _attack_rows(run) if r["metric"] == "asr"}
    header = next(ln for ln in section.splitlines() if ln.startswith("| editor"))
    assert header.split(" | ")[3:] == ["any", "unlearndiff", "p4d", "ringabell", "aliases", "misspell |"]
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in section.splitlines() if ln.startswith("| uce")]
    cells = next(c for c in rows if c[1] == "2")
    assert float(cells[4].split(" ± ")[0]) == pytest.approx(asr[(2, "attack:unlearndiff")], abs=1e-3)
    assert "Requests attacked per N: N=1: 1, N=2: 2" in section
    report = (tmp_path / "lb" / "report.html").read_text()
    assert "Robustness: attack success rate" in report
    details = pd.read_csv(tmp_path / "lb" / "ace.csv")["details"].dropna()
    assert len(details) and all(d.startswith("{") for d in details)
