"""``iceb edit``, ``iceb apply``, ``iceb generate`` and user-defined tasks, end to end on ``tiny``."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest
import torch

from editors import EDITORS, EditRequest
from editors.base import BaseEditor, EditResult
from editors.weights import get_tensor
from iceb.cli import main

TO_V = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v.weight"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "python_api.md"


class BigNudgeEditor(BaseEditor):
    """Test-only: a seeded, visible change of one cross-attention to_v, determined by the requests."""

    name = "test-nudge-cli"

    def edit(self, pipe: Any, requests: Sequence[EditRequest]) -> EditResult:
        self.check_requests(requests)
        g = torch.Generator().manual_seed(sum(r.seed + len(r.source) for r in requests))
        w = get_tensor(pipe, TO_V).detach()
        return EditResult({TO_V: w + torch.randn(w.shape, generator=g)})


EDITORS.register("test-nudge-cli", BigNudgeEditor, overwrite=True)




@pytest.fixture()
def session_model(tiny_model, tiny_pipe, monkeypatch):
    """Commands get the session's tiny model instead of building a new one (each build costs seconds)."""
    import iceb.models

    before = get_tensor(tiny_pipe, TO_V).detach().clone()

    def fake_load(spec, **kwargs):
        assert spec == "tiny", spec
        return tiny_model

    monkeypatch.setattr(iceb.models, "load_model", fake_load)
    yield tiny_model
    assert torch.equal(get_tensor(tiny_pipe, TO_V), before), "a command left the model edited"


def csv_file(tmp_path: Path) -> Path:
    p = tmp_path / "edits.csv"
    p.write_text("source,destination,templates,seed\ncat,dog,A photo of {}|{},3\napple,orange,,4\n")
    return p


def test_edit_command_writes_the_editors_delta(session_model, tmp_path, capsys):
    out = tmp_path / "e.safetensors"
    assert main(["edit", "--editor", "test-nudge-cli", "--model", "tiny", "--requests", str(csv_file(tmp_path)),
                 "--out", str(out), "--no-progress"]) == 0
    from iceb.data.request_files import read_requests
    from iceb.editfile import load_edit

    ef = load_edit(out)
    expected = BigNudgeEditor().edit(session_model.pipe, read_requests(csv_file(tmp_path)))
    assert list(ef.tensors) == [TO_V] and torch.equal(ef.tensors[TO_V], expected.tensors[TO_V])
    assert ef.meta["editor"] == "test-nudge-cli" and ef.meta["mode"] == "batch"
    assert [r["source"] for r in ef.meta["requests"]] == ["cat", "apple"]
    assert ef.meta["requests_file"].endswith("edits.csv")
    assert "wrote" in capsys.readouterr().out
    # sequential mode: two rounds, recorded
    out2 = tmp_path / "seq.safetensors"
    assert main(["edit", "--editor", "test-nudge-cli", "--model", "tiny", "--requests", str(csv_file(tmp_path)),
                 "--out", str(out2), "--mode", "sequential", "--rounds", "2", "--no-progress"]) == 0
    assert load_edit(out2).meta["mode"] == "sequential-2"


def test_edit_command_validates_before_loading_the_model(tmp_path, monkeypatch, capsys):
    import iceb.models

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the requests were validated")

    monkeypatch.setattr(iceb.models, "load_model", no_load)
    bad = tmp_path / "bad.csv"
    bad.write_text("source,destination\ncat,dog\ndog,wolf\n")
    assert main(["edit", "--editor", "noop", "--model", "tiny", "--requests", str(bad), "--out",
                 str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "row 2 (line 3): source 'dog' is the destination of row 1" in err
    assert main(["edit", "--editor", "no-such-editor", "--requests", str(csv_file(tmp_path)), "--out",
                 str(tmp_path / "x.safetensors")]) == 2
    assert "unknown editor 'no-such-editor'" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_apply_writes_a_loadable_edited_diffusers_folder(session_model, tmp_path):
    from iceb.editfile import edit_model, save_edit

    reqs = [EditRequest("cat", "dog", seed=9)]
    res, _ = edit_model("test-nudge-cli", session_model, reqs)
    path = save_edit(tmp_path / "e.safetensors", res, editor="test-nudge-cli", model=session_model, requests=reqs)
    folder = tmp_path / "edited"
    assert main(["apply", "--model", "tiny", str(path), "--out", str(folder)]) == 0
    assert (folder / "model_index.json").is_file() and list(folder.glob("unet/*.safetensors"))
    assert not list(folder.rglob("*.bin"))  # safetensors only
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, local_files_only=True)
    assert torch.equal(get_tensor(pipe, TO_V), res.tensors[TO_V])
    info = json.loads((folder / "iceb_model.json").read_text())
    assert info["family"] == "tiny" and info["edits"]["history"][0]["editor"] == "test-nudge-cli"
    assert info["generation"]["num_inference_steps"] == session_model.generation.num_inference_steps
    assert main(["apply", "--model", "tiny", str(path), "--out", str(folder)]) == 2  # never overwrites


def test_generate_writes_grid_pngs_and_seeds(session_model, tmp_path):
    from PIL import Image

    from iceb.editfile import edit_model, save_edit
    from iceb.generation import generate

    reqs = [EditRequest("cat", "dog", seed=1)]
    res, _ = edit_model("test-nudge-cli", session_model, reqs)
    edit = save_edit(tmp_path / "e.safetensors", res, editor="test-nudge-cli", model=session_model, requests=reqs)
    prompts = tmp_path / "p.txt"
    prompts.write_text("# my prompts\nA photo of cat\nA cat on a sofa\n")
    out = tmp_path / "renders"
    assert main(["generate", "--model", "tiny", "--edit", str(edit), "--prompts", str(prompts), "--seeds", "0,5",
                 "--out", str(out), "--no-progress"]) == 0
    manifest = json.loads((out / "images.json").read_text())
    rows = manifest["images"]
    assert [(r["prompt"], r["seed"]) for r in rows] == [("A photo of cat", 0), ("A photo of cat", 5),
                                                        ("A cat on a sofa", 0), ("A cat on a sofa", 5)]
    assert len(list((out / "images").glob("*.png"))) == 8
    grid = Image.open(out / "grid.png")
    assert grid.size == (2 * 128, 4 * 128)  # rows: images; columns: before | after (16 px shown at 128)
    csv_rows = (out / "images.csv").read_text().splitlines()
    assert csv_rows[0] == "index,prompt,seed,file_before,file_after" and len(csv_rows) == 5
    cfg = session_model.generation
    base = generate(session_model.pipe, ["A cat on a sofa"], [5], cfg, progress=False)[0]
    before = np.asarray(Image.open(out / rows[3]["file_before"]).convert("RGB"))
    after = [np.asarray(Image.open(out / r["file_after"]).convert("RGB")) for r in rows]
    assert np.array_equal(before, base)  # the before column is the base model, bit for bit (PNG is lossless)
    assert any(not np.array_equal(a, np.asarray(Image.open(out / r["file_before"]).convert("RGB")))
               for a, r in zip(after, rows))
    # no edits: prompts as arguments, one column
    out2 = tmp_path / "plain"
    assert main(["generate", "--model", "tiny", "A photo of dog", "--out", str(out2), "--no-progress"]) == 0
    assert (out2 / "images" / "0000_s0.png").is_file() and Image.open(out2 / "grid.png").size == (128, 128)



def test_generate_keeps_esd_case_numbers_and_seeds(session_model, tmp_path, capsys):
    """An ESD CSV exported from a task renders each row with its evaluation_seed, names each image by its
    case_number, and says nothing on stderr; ``--seeds`` overrides the file's seeds with one warning line."""
    import csv

    from PIL import Image

    from iceb.generation import generate

    esd = tmp_path / "smoke.csv"
    assert main(["tasks", "export", "smoke", "--edits", "1", "--format", "esd-csv", "--out", str(esd)]) == 0
    rows = list(csv.DictReader(esd.open()))
    rows = rows[1:3] + rows[-1:]  # not starting at case 0, so an index is not mistaken for the case number
    keep = tmp_path / "three.csv"
    with keep.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    capsys.readouterr()
    out = tmp_path / "esd"
    assert main(["generate", "--model", "tiny", "--prompts", str(keep), "--out", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().err == ""
    manifest = json.loads((out / "images.json").read_text())["images"]
    assert [(m["case_number"], m["prompt"], m["seed"]) for m in manifest] == [
        (r["case_number"], r["prompt"], int(r["evaluation_seed"])) for r in rows]
    for m, r in zip(manifest, rows):
        assert m["file"] == f"images/{m['index']:04d}_c{r['case_number']}_s{r['evaluation_seed']}.png"
        want = generate(session_model.pipe, [r["prompt"]], [int(r["evaluation_seed"])], session_model.generation,
                        progress=False)[0]
        assert np.array_equal(np.asarray(Image.open(out / m["file"]).convert("RGB")), want)
    assert (out / "images.csv").read_text().splitlines()[0] == "index,case_number,prompt,seed,file"
    out2 = tmp_path / "override"
    assert main(["generate", "--model", "tiny", "--prompts", str(keep), "--seeds", "7", "--out", str(out2),
                 "--no-progress"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--seeds 7 overrides the seeds" in err[0] and "3 of 3 prompts" in err[0]
    names = sorted(p.name for p in (out2 / "images").glob("*.png"))
    assert names == sorted(f"{i:04d}_c{r['case_number']}_s7.png" for i, r in enumerate(rows))
    capsys.readouterr()
    assert main(["generate", "--model", "tiny", "A photo of dog", "--seeds", "1", "--out", str(tmp_path / "p"),
                 "--no-progress"]) == 0
    assert capsys.readouterr().err == ""  # no file seeds: nothing overridden, no warning


TASK_YAML = """
name: my edits
requests:
  - {source: cat, destination: dog, seed: 3}
  - {source: apple, destination: orange, templates: ["A photo of {}"], seed: 4}
eval:
  - {prompt: "A photo of {}", seeds: [1, 2], subset: edit}
  - {prompt: "{}", seed: 1, subset: edit_dest}
  - {prompt: "A cat on a sofa", seed: 3, subset: general, request: cat}
  - {prompt: "A photo of a clock", seed: 5, subset: holdout}
edits: [1, 2]
"""


def test_user_task_runs_end_to_end_via_evaluate(session_model, tmp_path):
    from iceb.leaderboard.results import read_rows

    task = tmp_path / "task.yaml"
    task.write_text(TASK_YAML)
    runs = tmp_path / "runs"
    assert main(["evaluate", "--editor", "test-nudge-cli", "--task", str(task), "--model", "tiny", "--out",
                 str(runs), "--no-progress"]) == 0
    (run_dir,) = [p for p in runs.iterdir() if p.name != "cache"]
    assert re.fullmatch(r"test-nudge-cli-user-my-edits-[0-9a-f]{16}-[0-9a-f]{16}", run_dir.name)
    rows = read_rows(run_dir / "results.jsonl")
    change = {(r["n_edits"], r["subset"]): r for r in rows if r["metric"] == "image_change"}
    assert set(change) == {(n, s) for n in (1, 2) for s in ("edit", "edit_dest", "general", "holdout")}
    assert change[(1, "edit")]["n"] == 2 and change[(2, "edit")]["n"] == 4  # 2 seeds x first N requests
    assert change[(2, "general")]["n"] == 1 and change[(2, "holdout")]["n"] == 1
    assert change[(2, "edit")]["value"] > 0  # the edit changed the images
    assert (run_dir / "results.csv").is_file()


def test_bare_request_file_is_a_task(tmp_path):
    from iceb.tasks import get_task

    task = get_task(str(csv_file(tmp_path)))
    assert task.max_edits == 2 and task.default_edits == (2,) and task.default_metrics == ("image-change",)
    inst = task.build(1)
    assert [(p.prompt, p.seed, p.subset) for p in inst.prompts] == [
        ("A photo of cat", 3, "edit"), ("A photo of dog", 3, "edit_dest"), ("cat", 4, "edit"), ("dog", 4, "edit_dest")]


def test_user_task_classes_by_id_and_name(tmp_path):
    from iceb.tasks import get_task

    p = tmp_path / "t.yaml"
    p.write_text("""
requests:
  - {source: Peacock, destination: Ostrich, source_class: peacock, destination_class: 9}
eval:
  - {prompt: "A photo of {}", seed: 1, subset: edit}
  - {prompt: "A photo of {}", seed: 1, subset: edit_dest}
  - {prompt: "A photo of {}", seed: 2, subset: holdout, concept: goldfish}
  - {prompt: "A photo of my fish", seed: 3, subset: holdout, class: my fish}
classes: {my fish: 1}
""")
    task = get_task(str(p))
    assert task.default_metrics == ("iceb-cls",)
    got = [(p.prompt, p.subset, p.true_class, p.dest_class) for p in task.build(1).prompts]
    assert got == [("A photo of Peacock", "edit", 84, 9), ("A photo of Ostrich", "edit_dest", 9, 9),
                   ("A photo of goldfish", "holdout", 1, None), ("A photo of my fish", "holdout", 1, None)]
    assert task.build(1).requests[0].source_id == 84


@pytest.mark.parametrize("body, message", [
    ("requests: [{source: a, destination: b, source_class: crane}]", "'crane' is ambiguous"),
    ("requests: [{source: a, destination: b, source_class: peacok}]", "did you mean 'peacock'"),
    ("requests: [{source: a, destination: b}]\neval: [{prompt: x, colour: red}]", "eval entry 1: unknown key(s) 'colour'"),
    ("requests: [{source: a, destination: b}]\neval: [{prompt: x}, {prompt: '{} {}'}]", "eval entry 2: prompt '{} {}' holds 2"),
    ("requests: [{source: a, destination: b}]\neval: [{prompt: x, subset: other}]", "subset 'other' is not one of"),
    ("requests: [{source: a, destination: b}]\neval: [{prompt: x, request: zebra}]", "request 'zebra' is neither"),
    ("requests: [{source: a, destination: b}]\neval: [{prompt: '{}', subset: holdout}]", "needs a 'concept'"),
    ("requests: [{source: a, destination: b}]\neval: [{prompt: x, seed: one}]", "seed 'one' is not an integer"),
    ("requests: [{source: a, destination: b}]\nedits: [5]", "supports 1 to 1 edits"),
    ("requests: [{source: a, destination: b}]\nworld: toy", "for the 'toy' world"),
    ("requests: [{source: a, destination: b}, {source: a, destination: c}]", "row 2: duplicate source"),
])
def test_user_task_errors_name_the_entry(tmp_path, body, message):
    from iceb.data.request_files import RequestFileError
    from iceb.tasks import TaskError, get_task

    p = tmp_path / "t.yaml"
    p.write_text(body + "\n")
    with pytest.raises((TaskError, RequestFileError)) as err:
        get_task(str(p))
    assert message in str(err.value) and "t.yaml" in str(err.value)


def test_python_api_snippet_in_docs_runs(tmp_path, monkeypatch):
    text = DOCS.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    exec(compile(blocks[0], str(DOCS), "exec"), namespace)  # noqa: S102 - our own documentation
    assert (tmp_path / "cat2dog.safetensors").is_file() and (tmp_path / "cat2dog.safetensors.json").is_file()
    assert namespace["edit"].meta["n_requests"] == 2 and namespace["images"][0].shape[-1] == 3


def test_readme_carries_the_tested_python_api_snippet():
    """The README's Python example is the one the test above runs, character for character."""
    block = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)[0]
    assert block in (DOCS.parents[1] / "README.md").read_text()
