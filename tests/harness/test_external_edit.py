"""``--editor file:PATH``: an edit made elsewhere, scored by the same harness.

A UCE edit made through the Python API and saved (with its sidecar, without one, or applied into a diffusers
folder) gives, through ``file:``, the post-edit metric rows of the run in which the harness ran UCE itself;
the rows say where the edit came from; bad files fail in one line before any image is generated."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from iceb.cli import main
from iceb.harness import EvalConfig, evaluate
from iceb.leaderboard.results import comparable, is_cost_row, read_rows

N = 2
#: the fields that say which run and where the edit came from (an edit file has no preset): everything else must agree
PROVENANCE = ("editor", "run_id", "run_hash", "external", "sidecar", "preset", "tuned", "tuning_hash")


def _cfg(out: Path, editor: str, edits=(N,), **kw) -> EvalConfig:
    return EvalConfig(editor=editor, task="smoke", model="tiny", edits=edits, out=str(out), device="cpu",
                      progress=False, batch_size=4, log_samples=False, **kw)


def _metric_rows(run_dir: Path) -> list[dict]:
    rows = comparable(read_rows(run_dir / "results.jsonl"))
    return [{k: v for k, v in r.items() if k not in PROVENANCE} for r in rows if not is_cost_row(r)]


@pytest.fixture(scope="module")
def made(tiny_model, tmp_path_factory):
    """The direct UCE run, and the same edit made with the Python API and saved as an ICEB edit file."""
    from iceb import edit_model, save_edit
    from iceb.tasks import get_task

    root = tmp_path_factory.mktemp("external")
    direct = evaluate(_cfg(root / "runs", "uce"), model=tiny_model)
    requests = get_task("smoke").build(N).requests
    result, hp = edit_model("uce", tiny_model, requests, progress=False)
    path = save_edit(root / "uce.safetensors", result, editor="uce", hparams=hp, model=tiny_model, requests=requests)
    return root, direct, path, result


def test_an_edit_file_scores_like_the_direct_run(made, tiny_model):
    root, direct, path, _ = made
    run = evaluate(_cfg(root / "runs", f"file:{path}", edits=None), model=tiny_model)  # N from the sidecar
    rows = read_rows(run / "results.jsonl")
    assert {(r["editor"], r["external"], r["sidecar"]) for r in rows} == {("file:uce.safetensors", True, True)}
    assert {(r["editor"], r["external"], r["sidecar"]) for r in read_rows(direct / "results.jsonl")} == {
        ("uce", False, None)}
    metric = _metric_rows(run)
    assert metric == _metric_rows(direct) and metric
    assert any(r["subset"] == "edit" and r["value"] > 0 for r in metric)  # the edit changed the images
    source = json.loads((run / "config.json").read_text())["editor_source"]
    assert source["external"] is True and source["sidecar"] is True and source["kind"] == "edit-file"
    assert source["editor"] == "uce" and source["n_requests"] == N
    assert source["metadata"] == "sidecar-file"
    assert run.name.startswith("file_uce_safetensors-smoke-")
    # the cost measured when the edit was made travels with it
    assert {r["metric"] for r in rows if is_cost_row(r)} >= {"edit_seconds", "edit_file_mb"}


def test_a_sidecar_free_safetensors_gives_the_same_rows_marked(made, tiny_model):
    root, direct, _, result = made
    bare = root / "bare" / "changed.safetensors"
    bare.parent.mkdir()
    save_file({k: v.contiguous() for k, v in result.tensors.items()}, str(bare))  # no ICEB metadata at all
    run = evaluate(_cfg(root / "runs", f"file:{bare}"), model=tiny_model)
    rows = read_rows(run / "results.jsonl")
    assert {(r["editor"], r["external"], r["sidecar"]) for r in rows} == {("file:changed.safetensors", True, False)}
    assert _metric_rows(run) == _metric_rows(direct)
    source = json.loads((run / "config.json").read_text())["editor_source"]
    assert (source["sidecar"], source["kind"], source["editor"]) == (False, "safetensors", None)
    assert not any(r["metric"] == "edit_seconds" for r in rows)  # no time is made up for an edit made elsewhere


def test_cli_evaluate_scores_a_file_and_an_edit_file_without_its_json(made, tiny_model, monkeypatch, capsys):
    """Through the command line; an ICEB edit file whose .json sidecar is gone still has the copy in its header."""
    import shutil

    import iceb.models

    root, direct, path, _ = made
    monkeypatch.setattr(iceb.models, "load_model", lambda spec, **kw: tiny_model)
    lone = root / "lone" / "uce.safetensors"
    lone.parent.mkdir()
    shutil.copy(path, lone)  # without uce.safetensors.json
    assert main(["evaluate", "--editor", f"file:{lone}", "--task", "smoke", "--model", "tiny", "--edits", str(N),
                 "--out", str(root / "runs"), "--no-progress", "--batch-size", "4", "--no-log-samples"]) == 0
    (run,) = [p for p in (root / "runs").iterdir() if p.name.startswith("file_uce_safetensors") and
              json.loads((p / "config.json").read_text())["editor_source"]["metadata"] == "header"]
    assert {(r["external"], r["sidecar"]) for r in read_rows(run / "results.jsonl")} == {(True, True)}
    assert _metric_rows(run) == _metric_rows(direct)


def test_an_edited_pipeline_folder_is_diffed_against_the_base(made, tiny_model):
    from iceb.editfile import save_applied
    from iceb.harness.external import load_external

    root, direct, path, result = made
    folder = root / "edited-pipeline"
    save_applied(tiny_model, [path], folder)
    ext = load_external(f"file:{folder}", tiny_model)
    assert sorted(ext.tensors) == sorted(result.tensors)  # exactly the tensors UCE changed
    assert all(torch.equal(ext.tensors[k], result.tensors[k].to(ext.tensors[k].dtype)) for k in result.tensors)
    run = evaluate(_cfg(root / "runs", f"file:{folder}"), model=tiny_model)
    rows = read_rows(run / "results.jsonl")
    assert {(r["editor"], r["external"], r["sidecar"]) for r in rows} == {("file:edited-pipeline", True, False)}
    assert _metric_rows(run) == _metric_rows(direct)


@pytest.fixture()
def cli_model(tiny_model, monkeypatch):
    import iceb.models

    monkeypatch.setattr(iceb.models, "load_model", lambda spec, **kw: tiny_model)
    return tiny_model


def _bad(tmp_path: Path, name: str, tensors: dict) -> str:
    p = tmp_path / name
    save_file(tensors, str(p))
    return str(p)


def test_bad_external_edits_fail_in_one_line_before_generation(made, cli_model, tmp_path, capsys):
    from editors.weights import get_tensor

    _, _, path, result = made
    name = sorted(result.tensors)[0]
    live = get_tensor(cli_model.pipe, name)
    cases = [
        ("file:" + str(tmp_path / "missing.safetensors"), [], "no such file or folder"),
        ("file:", [], "give a path"),
        ("file:" + str(tmp_path), [], "no diffusers pipeline"),
        ("file:" + _bad(tmp_path, "names.safetensors", {"text_encoder.no.such.weight": torch.zeros(2)}), [],
         "does not fit model tiny:.*no tensor 'text_encoder.no.such.weight'"),
        ("file:" + _bad(tmp_path, "shape.safetensors", {name: torch.zeros(live.shape[0] + 1, *live.shape[1:])}), [],
         f"shape mismatch for {re.escape(repr(name))}"),
        ("file:" + str(path), ["--edits", "3"], "not task smoke's 3 at N=3"),
        ("file:" + str(path), ["--edits", "1,2"], "one edit count"),
        ("file:" + str(path), ["--editor-args", "lamb=0.1"], "--editor-args does not apply"),
        ("file:" + str(path), ["--mode", "sequential", "--rounds", "2", "--edits", "2"], "--mode sequential does"),
    ]
    for editor, extra, pattern in cases:
        out = tmp_path / "out"
        rc = main(["evaluate", "--editor", editor, "--task", "smoke", "--model", "tiny", "--out", str(out),
                   "--no-progress", "--batch-size", "4", *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and re.search(pattern, err[0]), (editor, extra, err)
        assert not list(out.rglob("*.png")), f"{editor} {extra}: images were generated before the error"
    assert main(["edit", "--editor", "file:" + str(path), "--model", "tiny", "--requests", str(path),
                 "--out", str(tmp_path / "e.safetensors")]) == 2
    assert "needs an editor" in capsys.readouterr().err


def test_the_provenance_fields_are_typed_and_optional():
    from iceb.leaderboard.schema import check_row

    old = {"editor": "uce", "model": "toy", "task": "ace", "world": "toy", "n_edits": 1, "mode": "batch",
           "subset": "edit", "metric": "source2dest", "value": 0.5, "bound": 0.9, "n": 3, "higher_is_better": True,
           "smoke": False, "run_id": "uce-ace-0123456789abcdef", "run_hash": "0123456789abcdef",
           "iceb_version": "0.1.0"}
    row = check_row(old)  # a row written before the fields existed
    assert (row.external, row.sidecar) == (None, None)
    assert check_row({**old, "external": True, "sidecar": False}).sidecar is False
    with pytest.raises(ValueError, match="external"):
        check_row({**old, "external": "yes"})
