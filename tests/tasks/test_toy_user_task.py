"""Toy concept names in user task files: on the toy world (the default model), ``source_class: <toy name>``
and ``concept: <alias>`` resolve against the world's concepts with no Python registration; an unknown name
is one clear error before a model loads, with the nearest toy names as hints."""
from __future__ import annotations

import argparse

import pytest

from iceb.tasks import get_task
from iceb.tasks.base import TaskError
from iceb.toy.world import ToyWorld

W = ToyWorld()  # the shipped world's defaults (the toy model's world_config)
A, B = W.concepts[0], W.concepts[1]


def _task(tmp_path, source_class: str):
    p = tmp_path / "t.yaml"
    p.write_text(f"""world: toy
requests:
  - {{source: {A.name}, destination: {B.name}, seed: 3, source_class: {source_class}, destination_class: {B.name}}}
eval:
  - {{prompt: "a photo of {{}}", seed: 1, subset: edit}}
  - {{prompt: "a photo of {{}}", seed: 2, subset: holdout, concept: {W.concepts[2].aliases[0]}}}
""")
    return p


def test_toy_names_and_aliases_resolve_to_concept_ids(tmp_path):
    t = get_task(str(_task(tmp_path, A.aliases[0])), world="toy")
    inst = t.build(1)
    (req,) = inst.requests
    assert (req.source_id, req.destination_id) == (A.id, B.id)
    holdout = [p for p in inst.prompts if p.subset == "holdout"]
    assert [p.true_class for p in holdout] == [2]
    assert t.default_metrics == ("iceb-cls",)  # named classes: scored by the classifier


def test_unknown_toy_name_is_one_error_with_hints(tmp_path):
    with pytest.raises(TaskError, match=rf"unknown class name '{A.name}x'.*did you mean '{A.name}'"):
        get_task(str(_task(tmp_path, A.name + "x")), world="toy")


def test_preflight_reads_the_task_file_against_the_default_toy_model(tmp_path, monkeypatch):
    """``iceb evaluate --task t.yaml`` on the default (toy) model checks the file before anything loads."""
    import iceb.models as models
    from iceb.commands._args import preflight

    monkeypatch.setattr(models, "default_model_spec", lambda: "toy")
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    ns = {"command": "evaluate", "editor": "noop", "model": None, "preset": None, "hparams": None,
          "editor_args": None, "mode": "batch", "rounds": 1, "metrics": None, "edits": None}
    preflight(argparse.Namespace(**ns, task=str(_task(tmp_path, A.name))))
    with pytest.raises(TaskError, match="unknown class name"):
        preflight(argparse.Namespace(**ns, task=str(_task(tmp_path, "no-such-toy"))))
