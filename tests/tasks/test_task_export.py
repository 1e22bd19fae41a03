"""``iceb tasks show --requests/--prompts`` and ``iceb tasks export``: the tables equal the task instance, and
each exported file reads back, with the reader that consumes it, to the instance's requests or prompts."""
from __future__ import annotations

import csv
import json

import pytest

from iceb.cli import main
from iceb.tasks import get_task
from iceb.tasks.export import ESD_COLUMNS


def _inst(name: str, world: str, n: int):
    return get_task(name, world=world).build(n)


def test_show_lists_requests_and_prompts_as_json(capsys):
    assert main(["tasks", "show", "smoke", "--edits", "3", "--requests", "--prompts", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    inst = _inst("smoke", "imagenet", 3)
    assert [(r["request_id"], r["source"], r["destination"], r["seed"]) for r in out["requests"]] == [
        (r.request_id, r.source, r.destination, r.seed) for r in inst.requests]
    assert [(p["subset"], p["prompt"], p["seed"], p["true_class"], p["group"]) for p in out["prompts"]] == [
        (p.subset, p.prompt, p.seed, p.true_class, p.group) for p in inst.prompts]
    assert out["counts"]["requests"] == 3


def test_show_text_is_aligned_and_csv_is_one_table(capsys):
    assert main(["tasks", "show", "smoke", "--edits", "2", "--requests"]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("request_id"))
    table = lines[head:head + 3]
    col = table[0].index("seed")
    assert [line[col:].split()[0] for line in table] == ["seed", "1000", "1001"]
    assert table[1].split()[:3] == ["smoke-0", "cat", "dog"]
    assert main(["tasks", "show", "smoke", "--edits", "2", "--prompts", "--subset", "holdout", "--format", "csv"]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    holdout = _inst("smoke", "imagenet", 2).subset("holdout")
    assert [(r["prompt"], int(r["seed"]), r["true_class"]) for r in rows] == [
        (p.prompt, p.seed, p.true_class) for p in holdout]


def test_model_picks_the_world(capsys):
    assert main(["tasks", "show", "ace", "--model", "toy", "--edits", "1", "--requests", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["world"] == "toy"
    assert out["requests"][0]["source"] == _inst("ace", "toy", 1).requests[0].source


def _export(tmp_path, fmt: str, name: str, model: str, n: int):
    """``iceb tasks export`` to a file; returns it and the task instance it should hold."""
    out = tmp_path / f"{fmt}.csv"
    assert main(["tasks", "export", name, "--format", fmt, "--edits", str(n), "--model", model,
                 "--out", str(out)]) == 0
    return out, _inst(name, "toy" if model == "toy" else "imagenet", n)


@pytest.mark.parametrize("name,model,n", [("smoke", "tiny", 4), ("ace", "toy", 3)])
def test_esd_csv_reads_back_with_generates_reader(tmp_path, capsys, name, model, n):
    from iceb.rendering import read_prompt_items, read_prompts

    out, inst = _export(tmp_path, "esd-csv", name, model, n)
    header = out.read_text().splitlines()[0]
    assert header.startswith("case_number,prompt,evaluation_seed,") and header.split(",") == list(ESD_COLUMNS)
    assert read_prompts(out) == [(p.prompt, p.seed) for p in inst.prompts]
    assert [it.case for it in read_prompt_items(out)] == [str(k) for k in range(len(inst.prompts))]
    rows = list(csv.DictReader(out.open()))
    assert [int(r["case_number"]) for r in rows] == list(range(len(inst.prompts)))
    assert [r["subset"] for r in rows] == [p.subset for p in inst.prompts]
    assert [r["class"] for r in rows] == [str(p.true_class) for p in inst.prompts]
    sources = {r.request_id: r.source for r in inst.requests}
    assert all(r["concept"] == (sources[r["group"].split("/")[0]] if r["subset"] != "holdout" else "") for r in rows)


@pytest.mark.parametrize("name,model,n", [("smoke", "tiny", 5), ("ace", "toy", 4)])
def test_requests_csv_reads_back_identically(tmp_path, capsys, name, model, n):
    from iceb.data.request_files import read_request_file, requests_hash

    out, inst = _export(tmp_path, "requests-csv", name, model, n)
    back = read_request_file(out).requests
    assert back == list(inst.requests)
    assert requests_hash(back) == requests_hash(inst.requests)


def test_requests_csv_keeps_a_pipe_inside_a_template(tmp_path):
    from editors.requests import EditRequest
    from iceb.data.request_files import read_request_file
    from iceb.tasks.base import TaskInstance
    from iceb.tasks.export import write_export

    reqs = (EditRequest("cat", "dog", templates=("{} | art", "A photo of {}"), seed=3, source_id=7,
                        request_id="r0"),)
    write_export(TaskInstance("t", 1, reqs, ()), "requests-csv", tmp_path / "r.csv")
    assert read_request_file(tmp_path / "r.csv").requests == list(reqs)
