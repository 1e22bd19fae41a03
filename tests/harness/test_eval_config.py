"""EvalConfig checks itself: every bad setting raises a ValueError naming its flag, before a model loads."""
from __future__ import annotations

import math

import pytest

from iceb.harness import EvalConfig


@pytest.mark.parametrize("changes, flag", [
    ({"mode": "parallel"}, "--mode"),
    ({"rounds": 0, "mode": "sequential"}, "--rounds"),
    ({"rounds": 2}, "--rounds needs --mode sequential"),
    ({"rounds": 4, "mode": "sequential", "edits": (2, 5)}, r"--rounds 4 exceeds the edit count\(s\) \[2\]"),
    ({"limit": 0}, "--limit"),
    ({"limit": -3}, "--limit"),
    ({"steps": 0}, "--steps"),
    ({"guidance": 0.0}, "--guidance"),
    ({"guidance": -1.5}, "--guidance"),
    ({"guidance": math.nan}, "--guidance"),
    ({"guidance": math.inf}, "--guidance"),
    ({"batch_size": 0}, "--batch-size"),
    ({"edits": ()}, "--edits is empty"),
    ({"edits": (1, 0)}, "--edits takes positive"),
    ({"edits": (-5,)}, "--edits takes positive"),
    ({"edits": (1, 10, 1)}, "--edits lists an edit count twice"),
])
def test_each_bad_setting_raises_a_value_error_naming_the_flag(changes, flag):
    with pytest.raises(ValueError, match=flag):
        EvalConfig(**changes).validate()


def test_good_settings_pass_and_give_the_edit_mode():
    from editors.run import EditMode

    cfg = EvalConfig(mode="sequential", rounds=3, edits=(3, 10), limit=1, steps=1, guidance=7.5, batch_size=1)
    assert cfg.validate() is cfg
    assert cfg.edit_mode == EditMode("sequential", 3) and str(cfg.edit_mode) == "sequential-3"
    assert str(EvalConfig().validate().edit_mode) == "batch"


def test_the_harness_refuses_a_bad_config_before_loading_the_model(monkeypatch, tmp_path):
    import iceb.models
    from iceb.harness import evaluate

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the config was checked")

    monkeypatch.setattr(iceb.models, "load_model", no_load)
    with pytest.raises(ValueError, match="--guidance"):
        evaluate(EvalConfig(model="tiny", guidance=-1.0, out=str(tmp_path)))
    with pytest.raises(Exception, match="unknown editor"):
        evaluate(EvalConfig(model="tiny", editor="no-such-editor", out=str(tmp_path)))
    assert not any(tmp_path.iterdir())


def test_the_cli_reports_a_bad_flag_as_one_line(capsys, tmp_path):
    from iceb.cli import main

    # the CLI's argparse validator names the flag first (EvalConfig.validate catches the same for API callers)
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--model", "tiny", "--limit", "0", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("iceb evaluate: error: argument --limit") and "positive" in err[-1]
    assert "Traceback" not in "\n".join(err) and not any(tmp_path.iterdir())
