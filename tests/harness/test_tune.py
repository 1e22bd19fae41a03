"""``iceb tune``: the study end to end on the shipped toy model (dev split), its resume after a kill, the preset it
writes and the strict loader reading it back, the rows citing it, and every bad input before a model loads.

The issue asks for the two-trial study on ``tiny``; ``tiny`` speaks the ImageNet world, whose splits (EMCID's
official one, the project's 1k) use every class and so have no dev split. The study runs on the toy model, which
ships in the repository and costs seconds per trial.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from editors import get_editor
from editors.hparams import (
    TUNING_KEYS,
    Hparams,
    HparamsError,
    check_search_space,
    check_tuning_record,
    float_range,
    tuning_hash,
)
from iceb.harness.tune import TuneConfig, TuneError, objective_value, tune

ROOT = Path(__file__).resolve().parents[2]
EDITS = (1, 2)


def _cfg(out: Path, **kw) -> TuneConfig:
    base = {"editor": "uce", "task": "ace", "model": "toy", "trials": 2, "edits": EDITS, "preset": "toy-untuned",
            "out": str(out), "progress": False}
    return TuneConfig(**{**base, **kw})


def _states(db: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT number, state FROM trials ORDER BY number").fetchall()


def test_every_declared_search_space_matches_its_hparams():
    """Each tunable editor's space names real keys with ranges its fields accept (what tune checks first)."""
    tunable = ["uce", "time", "emcid", "emcid-ns", "speed", "rome", "esd-x", "esd-u", "mace"]
    for name in tunable:
        cls = get_editor(name)
        space = check_search_space(cls.hparams_class, name)
        assert space and set(space) <= {f.name for f in dataclasses.fields(cls.hparams_class)}


def test_bad_inputs_fail_before_any_model_loads(monkeypatch, tmp_path):
    import iceb.models

    def no_load(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(iceb.models, "load_model", no_load)
    with pytest.raises(KeyError, match="Did you mean 'uce'"):
        tune(_cfg(tmp_path, editor="ucee"))
    with pytest.raises(HparamsError, match="declares no search space"):
        tune(_cfg(tmp_path, editor="noop", preset=None))
    with pytest.raises(ValueError, match="has no dev split"):
        tune(_cfg(tmp_path, task="smoke"))
    with pytest.raises(ValueError, match="has no dev split"):
        tune(_cfg(tmp_path, model="tiny", preset=None))
    with pytest.raises(TuneError, match="--trials"):
        tune(_cfg(tmp_path, trials=0))
    with pytest.raises(ValueError, match="supports 1 to 6 edits"):
        tune(_cfg(tmp_path, edits=(2, 16)))
    with pytest.raises(TuneError, match="searches"):
        tune(_cfg(tmp_path, editor_args={"lamb": 1.0}))
    with pytest.raises(TuneError, match="named objective"):
        tune(_cfg(tmp_path, objective="ablatoin"))

    @dataclasses.dataclass(frozen=True)
    class Bad(Hparams):
        lr: float = 0.1
        search_space = {"learning_rate": float_range(0.01, 1.0)}

    with pytest.raises(HparamsError, match="has no key 'learning_rate'"):
        check_search_space(Bad, "bad")

    @dataclasses.dataclass(frozen=True)
    class OutOfRange(Hparams):
        lr: float = dataclasses.field(default=0.1, metadata={"range": {"min": 0.0, "exclusive_min": True}})
        search_space = {"lr": float_range(-1.0, 1.0)}

    with pytest.raises(HparamsError, match="must be > 0"):
        check_search_space(OutOfRange, "bad")


def test_cli_refuses_zero_trials_and_names_the_missing_dev_split():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "iceb", "tune", "--editor", "uce", "--trials", "0"], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 2 and "--trials: must be a positive integer" in r.stderr
    r = subprocess.run([sys.executable, "-m", "iceb", "tune", "--editor", "uce", "--model", "tiny"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "has no dev split" in r.stderr and "Traceback" not in r.stderr


def test_objective_reads_the_terms_of_the_rows():
    rows = [{"n_edits": 2, "subset": "general", "metric": "source2dest", "value": 0.8},
            {"n_edits": 2, "subset": "holdout", "metric": "holdout_delta", "value": -0.2},
            {"n_edits": 2, "subset": "general", "metric": "rectify_gain", "value": 0.5}]
    assert objective_value(rows, 2, "ablation")[0] == pytest.approx(0.3)
    assert objective_value(rows, 2, "rectify")[0] == pytest.approx(0.3)
    assert objective_value(rows, 2, "general/source2dest")[0] == pytest.approx(0.8)
    with pytest.raises(TuneError, match="no general/source_forget row"):
        objective_value(rows, 2, "forget")


def test_tuning_record_is_accepted_exactly():
    rec = dict.fromkeys(TUNING_KEYS, 0)
    assert check_tuning_record(rec, "f") == rec
    with pytest.raises(HparamsError, match="unknown key"):
        check_tuning_record({**rec, "note": "hand-edited"}, "f")
    with pytest.raises(HparamsError, match="lacks 'date'"):
        check_tuning_record({k: 0 for k in TUNING_KEYS if k != "date"}, "f")


def test_a_killed_study_resumes_and_its_preset_loads_back(tmp_path):
    """A two-trial study killed in its second trial resumes from its SQLite file: the interrupted trial is failed
    and run again with the same values; the preset reads back through the strict loader; rows of a run with it
    cite the record's hash."""
    out = tmp_path / "tune"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ICEB_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "iceb", "tune", "--editor", "uce", "--model", "toy", "--trials", "2",
           "--edits", ",".join(map(str, EDITS)), "--preset", "toy-untuned", "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    killed, deadline = False, time.monotonic() + 600
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            dbs = list(out.glob("*/study.db"))
            if dbs:
                try:
                    states = _states(dbs[0])
                except sqlite3.Error:
                    states = []
                if (1, "RUNNING") in states:  # trial 0 done, trial 1 under way
                    os.killpg(proc.pid, signal.SIGKILL)
                    killed = True
                    break
            time.sleep(0.2)
    finally:
        if proc.poll() is None and not killed:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert killed, "the study finished or stalled before its second trial"
    (db,) = out.glob("*/study.db")
    assert _states(db) == [(0, "COMPLETE"), (1, "RUNNING")]

    os.environ["ICEB_CACHE"] = str(tmp_path / "cache")
    try:
        res = tune(_cfg(out))
    finally:
        del os.environ["ICEB_CACHE"]
    states = dict(_states(db))
    assert states[1] == "FAIL" and list(states.values()).count("COMPLETE") == 2  # trial 1 again, as trial 2
    with sqlite3.connect(db) as con:
        params = con.execute("SELECT trial_id, param_name, param_value FROM trial_params").fetchall()
    by_trial: dict[int, dict] = {}
    for tid, k, v in params:
        by_trial.setdefault(tid, {})[k] = v
    assert len(by_trial) == 3 and list(by_trial.values())[1] == list(by_trial.values())[2]

    import yaml

    data = yaml.safe_load(res.preset_path.read_text())
    record = check_tuning_record(data["tuning"], "preset")
    assert record["trials"] == 2 and record["split"] == "dev" and record["edits"] == list(EDITS)
    assert record["untuned_value"] == pytest.approx(res.untuned_value, abs=1e-6)
    assert res.best_value >= res.untuned_value - 1e-6  # never worse than the base on the dev split
    uce = get_editor("uce")
    hp = uce.load_hparams("toy", res.preset_path)
    for k, v in res.best_params.items():
        assert getattr(hp, k) == pytest.approx(v)
    prov = uce.hparams_provenance("toy", res.preset_path)
    assert prov == {"preset": "toy", "tuned": True, "tuning_hash": tuning_hash(record)}
    bad = tmp_path / "bad.yaml"
    bad.write_text(res.preset_path.read_text().replace("lamb:", "lambda:"))
    with pytest.raises(HparamsError, match="unknown key 'lambda'"):
        uce.load_hparams("toy", bad)
    # every trial ran on the dev split: its rows say so, and its requests are the dev split's only
    from iceb.leaderboard.results import read_rows

    trial_runs = sorted((res.folder / "trials").glob("uce-ace-*/results.jsonl"))
    assert len(trial_runs) >= 3  # the base preset and two trials (the interrupted trial's values ran again)
    assert all(r["split"] == "dev" for p in trial_runs for r in read_rows(p))
    from iceb.leaderboard.tables import build_leaderboard

    with pytest.raises(ValueError, match="dev-split runs"):  # a trial's numbers never reach a leaderboard
        build_leaderboard([trial_runs[0].parent], tmp_path / "board", plots=False, report=False)
    # the study folder kept every trial's harness run; a second call with the same settings adds no trial
    again = tune(_cfg(out))
    assert again.trials == 2 and dict(_states(db)) == states
    from filelock import FileLock

    with FileLock(str(res.folder / ".study.lock")):  # a live process holds the study: a second one is refused
        with pytest.raises(RuntimeError, match="another process is running the study"):
            tune(_cfg(out))
    # a run with the tuned preset cites it in every row
    from iceb.harness import EvalConfig, evaluate

    run = evaluate(EvalConfig(editor="uce", task="ace", model="toy", edits=(1,), limit=1, hparams=str(res.preset_path),
                              out=str(tmp_path / "runs"), device="cpu", progress=False, log_samples=False,
                              editor_cache=str(tmp_path / "cache")))
    rows = read_rows(run / "results.jsonl")
    assert rows and all(r["tuned"] is True and r["tuning_hash"] == tuning_hash(record) and r["split"] == "test"
                        and r["preset"] == "toy" for r in rows)
