"""The white-box attack works: on the toy world it brings back an ESD-erased concept that the original prompt no
longer shows.

Measured (2026-12-03, ``iceb evaluate --editor esd-x --task ace --model toy --edits 4 --editor-args
treat_updates_as_erase=true,iterations=60 --attacks unlearndiff``, the toy budget: 3 slots, 5 blocks of 10
steps): the original prompt still shows 3 of the 4 sources (this short ESD leaves them); the fourth
(``dapal``, P(source) 3e-6 after the edit) comes back at the attack's first block with P(source) 0.77, so
ASR 1.0 against pre-ASR 0.75. The same attack against the shipped ESD-x preset (300 iterations, every source
erased) recovers none of 4 (also with 800 steps, 20 blocks of 40): on the toy world a fully trained ESD-x is
robust to it, which the leaderboard reports. The test asserts what can fail for a real bug in the attack
(slots, gradient, reference latents, judge): at least one source the original prompt lost comes back.
"""
from __future__ import annotations

import json

import pytest


def test_unlearndiff_recovers_an_esd_erased_concept(tmp_path):
    from iceb.harness import EvalConfig, evaluate
    from iceb.models import toy_quality_passed

    if not toy_quality_passed():
        pytest.skip("no toy world here")
    run = evaluate(EvalConfig(editor="esd-x", task="ace", model="toy", edits=(4,), limit=1, metrics=("iceb-cls",),
                              editor_args={"treat_updates_as_erase": True, "iterations": 60}, attacks=("unlearndiff",),
                              out=str(tmp_path), device="cpu", progress=False, preset="toy-untuned"))
    recs = [json.loads(x) for x in (run / "attacks" / "n4" / "unlearndiff.jsonl").read_text().splitlines()]
    lost = [r for r in recs if not r["pre_success"]]
    assert lost, "ESD-x erased none of the 4 sources: the test's premise changed"
    assert all(r["unedited_success"] for r in lost)  # the unedited model showed them
    recovered = [r for r in lost if r["success"]]
    assert recovered, [(r["request_id"], r["p_source"]) for r in lost]
    assert all(r["p_source"] > 0.5 and r["steps"] <= 50 for r in recovered)
