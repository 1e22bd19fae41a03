"""The I2P loader and the ``nsfw`` task, on small files of I2P's layout; the official file where it is local.

The released file (EMCID's ``data/i2p/unsafe-prompts4703.csv``) is never committed: the count test reads it
from ``$ICEB_I2P_CSV``, ``$ICEB_EMCID_DATA/i2p/`` or ``../shared/reference/emcid/data/i2p/`` and is skipped
where none has it.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from conftest import I2P_COLUMNS, ICEB_REF, SHARED_REF, write_i2p_csv

from iceb.data.i2p import I2P_COUNT, I2P_RELPATH, I2P_SHA256, I2PPrompt, load_i2p
from iceb.tasks import TaskError, get_task
from iceb.tasks.nsfw import NSFW_CONCEPTS, NSFW_TEMPLATES, NSFWTask


def _official_i2p() -> Path | None:
    for cand in (os.environ.get("ICEB_I2P_CSV"),
                 os.environ.get("ICEB_EMCID_DATA") and str(Path(os.environ["ICEB_EMCID_DATA"]) / I2P_RELPATH),
                 str(SHARED_REF / "emcid" / "data" / I2P_RELPATH)):
        if cand and Path(cand).is_file():
            return Path(cand)
    return None


def test_official_i2p_file_has_4703_prompts():
    path = _official_i2p()
    if path is None:
        pytest.skip(f"EMCID's data/{I2P_RELPATH} is not on this machine (set ICEB_I2P_CSV or ICEB_EMCID_DATA)")
    from iceb.utils.download import sha256_file

    assert sha256_file(path) == I2P_SHA256
    rows = load_i2p(path)
    assert len(rows) == I2P_COUNT == 4703
    assert [r.case_number for r in rows] == list(range(4703))
    assert max(r.evaluation_seed for r in rows) < 2**32
    assert sum("sexual" in r.categories for r in rows) > 0
    inst = NSFWTask(csv=path).build(3)
    assert inst.counts()["general"] == 4703 and len({p.group for p in inst.subset("general")}) == 4703


def test_loader_reads_typed_records(tmp_path):
    rows = load_i2p(write_i2p_csv(tmp_path / "i2p.csv"))
    assert len(rows) == 4 and all(isinstance(r, I2PPrompt) for r in rows)
    r0 = rows[0]
    assert r0.prompt == "a red apple on a table" and r0.categories == ("violence", "self-harm")
    assert r0.evaluation_seed == 4290749014 and r0.evaluation_guidance == 7.0 and r0.case_number == 0
    assert r0.hard is False and rows[1].hard is True and r0.sd_image_width == 512
    assert r0.sd_model == "stable-diffusion-v1-4" and rows[3].evaluation_seed == 2**32 - 1
    assert [r.case_number for r in load_i2p(tmp_path / "i2p.csv", limit=2)] == [0, 1]
    # only the required columns: the optional ones are None
    few = ("idx", "prompt", "categories", "hard", "evaluation_seed", "evaluation_guidance", "case_number")
    (m,) = load_i2p(write_i2p_csv(tmp_path / "few.csv", prompts=("a cat",), columns=few))
    assert m.prompt == "a cat" and m.nudity_percentage is None and m.lexica_url is None


def _edit_cell(path: Path, row: int, column: str, value: str) -> Path:
    with open(path, newline="", encoding="utf-8") as fh:
        data = list(csv.reader(fh))
    data[row][data[0].index(column)] = value
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(data)
    return path


def test_missing_column_is_one_clear_error(tmp_path):
    cols = tuple(c for c in I2P_COLUMNS if c != "evaluation_seed")
    path = write_i2p_csv(tmp_path / "nocol.csv", columns=cols)
    with pytest.raises(ValueError, match=r"nocol\.csv: missing column\(s\) \['evaluation_seed'\]"):
        load_i2p(path)


@pytest.mark.parametrize("column,value,message", [
    ("evaluation_seed", "abc", "evaluation_seed 'abc' is not an integer"),
    ("evaluation_seed", "1.5", "is not an integer"),
    ("evaluation_seed", str(2**63), "outside 0 <= seed < 2\\*\\*63"),
    ("evaluation_seed", "-1", "outside 0 <= seed"),
    ("hard", "maybe", "hard 'maybe' is not 0 or 1"),
    ("evaluation_guidance", "nan", "not finite"),
    ("prompt", "  ", "the prompt is empty"),
    ("case_number", "0", "case_number 0 repeats line 2"),
])
def test_bad_row_names_file_and_line(tmp_path, column, value, message):
    path = _edit_cell(write_i2p_csv(tmp_path / "bad.csv"), 3, column, value)  # the third data row: line 4
    with pytest.raises(ValueError, match=rf"bad\.csv, line 4: .*{message}"):
        load_i2p(path)


def test_short_row_and_empty_file(tmp_path):
    path = write_i2p_csv(tmp_path / "short.csv")
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("9,a truncated row\n")
    with pytest.raises(ValueError, match=r"short\.csv, line 6: bad I2P row \(2 cell\(s\) for 16 columns\)"):
        load_i2p(path)
    empty = tmp_path / "empty.csv"
    empty.write_text(",".join(I2P_COLUMNS) + "\n")
    with pytest.raises(ValueError, match="holds no I2P prompts"):
        load_i2p(empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_i2p(tmp_path / "absent.csv")


def test_task_builds_the_official_requests_and_the_i2p_prompts(tmp_path, monkeypatch):
    monkeypatch.setenv("ICEB_I2P_CSV", str(write_i2p_csv(tmp_path / "i2p.csv")))
    task = get_task("nsfw", world="imagenet")
    assert isinstance(task, NSFWTask) and task.max_edits == 3
    assert task.default_edits == (3,) and task.default_metrics == ("nudenet",)
    inst = task.build(3)
    assert [r.source for r in inst.requests] == list(NSFW_CONCEPTS) == ["nudity", "sexual", "blood"]
    for r in inst.requests:
        assert r.kind == "erase" and r.destination == "" and r.templates == NSFW_TEMPLATES
        assert r.destination_prompts() == ["", "", ""]
    assert task.build(1).requests == inst.requests[:1]
    general = inst.subset("general")
    assert [(p.prompt, p.seed, p.group) for p in general] == [
        ("a red apple on a table", 4290749014, "i2p-0"), ("a quiet harbour at dawn, oil painting", 1, "i2p-1"),
        ("portrait of an old sailor, highly detailed", 612304884, "i2p-2"), ("a bowl of soup", 2**32 - 1, "i2p-3")]
    assert general[0].true_class == "violence, self-harm" and general[0].dest_class is None
    assert task.build(1).subset("general") == general  # the same I2P prompts for every N
    edit = inst.subset("edit")
    assert [p.prompt for p in edit[:3]] == ["nudity", "A photo depicting nudity", "A photo showing nudity"]
    assert {p.group for p in edit} == {r.request_id for r in inst.requests} and len(edit) == 9
    assert inst.counts() == {"requests": 3, "edit": 9, "edit_dest": 0, "general": 4, "alias": 0, "holdout": 0}
    assert inst.info["i2p_prompts"] == 4 and inst.info["i2p_file"] == "i2p.csv"
    # the first K prompts, and --limit's cap
    assert [p.group for p in NSFWTask(max_prompts=2).build(3).subset("general")] == ["i2p-0", "i2p-1"]
    assert len(inst.limited(1).subset("general")) == 1
    # an explicit path wins over the variable
    other = write_i2p_csv(tmp_path / "other.csv", prompts=("a lighthouse",))
    assert [p.prompt for p in NSFWTask(csv=other).build(1).subset("general")] == ["a lighthouse"]


def test_task_refuses_the_toy_world_and_bad_options(tmp_path):
    with pytest.raises(TaskError, match="no nudity to erase"):
        get_task("nsfw", world="toy")
    with pytest.raises(TaskError, match="max_prompts"):
        NSFWTask(max_prompts=0)
    with pytest.raises(TaskError, match="supports 1 to 3 edits"):
        NSFWTask(csv=write_i2p_csv(tmp_path / "i2p.csv")).build(4)
    with pytest.raises(FileNotFoundError):
        NSFWTask(csv=tmp_path / "absent.csv").build(1)


def test_data_dir_finds_the_file(tmp_path):
    (tmp_path / "i2p").mkdir()
    (tmp_path / "iceb_data").mkdir()
    write_i2p_csv(tmp_path / I2P_RELPATH)
    for d in (tmp_path, tmp_path / "iceb_data"):  # EMCID's data/ or data/iceb_data (iceb tasks --data-dir)
        assert NSFWTask(data_dir=d).build(1).counts()["general"] == 4


def test_tasks_show_works_without_a_world(tmp_path, monkeypatch, capsys):
    from iceb.cli import main

    monkeypatch.setenv("ICEB_I2P_CSV", str(write_i2p_csv(tmp_path / "i2p.csv")))
    assert main(["tasks", "show", "nsfw"]) == 0
    out = capsys.readouterr().out
    assert "nsfw (imagenet), 3 of at most 3 edits" in out and "general" in out
    assert main(["tasks", "show", "nsfw", "--model", "tiny", "--requests"]) == 0
    assert "nudity" in capsys.readouterr().out


def test_uce_emcid_mixed_preset_retains_the_first_200_ace_sources(monkeypatch):
    from editors.uce import UCEEditor

    hp = UCEEditor.load_hparams("sd-1.4", preset="emcid-mixed")
    assert (hp.lamb, hp.erase_scale, hp.preserve_scale, hp.technique, hp.tokens) == (0.1, 0.1, 0.1, "tensor", "2023")
    assert len(hp.preserve) == 200 and hp.preserve_empty == "if_none" and not hp.preserve_destinations
    assert hp.templates == ("{}",)
    if not ICEB_REF.is_dir():
        pytest.skip("EMCID's iceb_data is not on this machine: the retain list is not compared")
    monkeypatch.setenv("ICEB_OFFICIAL_DATA", str(ICEB_REF))
    assert list(hp.preserve) == [r.source for r in get_task("ace", world="imagenet").build(200).requests]


def test_end_to_end_on_tiny_with_uce_and_nudenet(tiny_model, tmp_path, monkeypatch):
    pytest.importorskip("nudenet", reason="the nsfw extra is not installed")
    from iceb.harness import EvalConfig, evaluate
    from iceb.leaderboard.results import read_rows

    monkeypatch.setenv("ICEB_I2P_CSV", str(write_i2p_csv(tmp_path / "i2p.csv", prompts=("a red apple", "a boat"))))
    cfg = EvalConfig(editor="uce", task="nsfw", model="tiny", edits=(1, 3), metrics=("nudenet",), out=str(tmp_path),
                     device="cpu", progress=False, batch_size=4, log_samples=False)
    run = evaluate(cfg, model=tiny_model)
    rows = [r for r in read_rows(Path(run) / "results.jsonl") if str(r.get("metric", "")).startswith("nudenet")]
    by = {(r["n_edits"], r["subset"], r["metric"]): r for r in rows}
    for n, n_edit in ((1, 3), (3, 9)):
        for subset, k in (("edit", n_edit), ("general", 2)):
            for name in ("nudenet_total", "nudenet_total_pre", "nudenet_feet_exposed", "nudenet_any"):
                r = by[(n, subset, name)]
                assert r["n"] == k and r["task"] == "nsfw" and r["editor"] == "uce"
                if name != "nudenet_any":
                    assert r["value"] >= 0 and float(r["value"]).is_integer()
                else:
                    assert 0 <= r["value"] <= 1
