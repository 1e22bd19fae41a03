"""The harness's cost rows on a real editor: ``--cold-cost`` measures each edit from empty caches and again warm
(same tensors bit for bit), and without it each measurement says which cache state it ran in."""
from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file

EMCID_ARGS = {"v_num_grad_steps": 2, "train_steps": 1, "mom2_n_samples": 100}


def _evaluate(out: Path, model, **kw) -> tuple[Path, list[dict]]:
    from iceb.harness import EvalConfig, evaluate
    from iceb.leaderboard.results import read_rows

    cfg = EvalConfig(editor="emcid", task="smoke", model="tiny", edits=(1, 2), out=str(out), device="cpu",
                     progress=False, batch_size=4, editor_args=EMCID_ARGS, log_samples=False, **kw)
    run = evaluate(cfg.validate(), model=model)
    return run, [r for r in read_rows(run / "results.jsonl") if r["subset"].startswith("cost")]


def _by(rows, n):
    return {(r["subset"], r["metric"]): r["value"] for r in rows if r["n_edits"] == n}


def test_cold_cost_measures_cold_then_warm(tiny_model, tmp_path):
    run, rows = _evaluate(tmp_path, tiny_model, cold_cost=True)
    for n in (1, 2):
        got = _by(rows, n)
        for state in ("cold", "warm"):
            assert {f"{p}_seconds" for p in ("precompute", "per_concept", "solve", "edit")} | {"peak_rss_mb"} <= \
                {m for s, m in got if s == f"cost:{state}"}
        # warm reads stage I and the statistics from the caches the cold edit filled
        assert got[("cost:warm", "per_concept_seconds")] < got[("cost:cold", "per_concept_seconds")]
        assert got[("cost", "edit_file_mb")] * 2**20 == (run / "edits" / f"n{n}.safetensors").stat().st_size
    import json

    side = json.loads((run / "edits" / "n2.safetensors.json").read_text())["info"]  # where run_editor puts it
    assert side["cost"]["state"]["edit"] == "cold" and side["cost_warm"]["state"]["edit"] == "warm"
    assert side["cost_warm"]["same_tensors"] is True
    assert side["cost"]["cache"]["emcid-stage1"] == [0, 2]  # a fresh cache for each N: no reuse of N=1's concept
    assert not list((run / "work").glob("*/cold-editor-cache"))  # the private caches are gone


def test_shared_caches_label_each_measurement(tiny_model, tmp_path):
    run, rows = _evaluate(tmp_path, tiny_model)
    assert {s for s, _ in _by(rows, 1)} == {"cost:cold", "cost"}  # first edit: nothing cached yet
    assert {s for s, _ in _by(rows, 2)} == {"cost:mixed", "cost"}  # N=2 reuses N=1's stage I and statistics
    again, rows2 = _evaluate(tmp_path / "again", tiny_model, overwrite=True)
    a, b = (load_file(str(d / "edits" / "n2.safetensors")) for d in (run, again))
    assert all(a[k].equal(b[k]) for k in a)  # warm or cold, the same edit
