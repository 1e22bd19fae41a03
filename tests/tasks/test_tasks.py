"""ACE and rectification tasks: one code path over split bundles (synthetic toy bundle; official when present)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ICEB_REF as REF

from iceb.data.split_bundle import Concept, EditPair, PromptSeed, Rectification, SplitBundle
from iceb.tasks.base import TaskError


def toy_bundle() -> SplitBundle:
    def concept(i, name, aliases=()):
        return Concept(i, name, tuple(aliases), tuple(PromptSeed(f"a {{}} in scene {k}", 100 * i + k) for k in range(4)))

    concepts = (concept(0, "red circle", ["crimson disc"]), concept(1, "blue square"), concept(2, "green star"),
                concept(3, "gray cross", ["ash cross", "slate cross"]), concept(4, "pink ring"))
    edits = (EditPair(0, 2, 11, (1, 2, 3)), EditPair(3, 4, 12, (4, 5, 6)), EditPair(1, 2, 13, (7, 8, 9)))
    rects = (Rectification(3, "ash cross", "gray cross", 21, (300, 301, 302)),)
    return SplitBundle("toy-test", "toy", "1", concepts, edits, (2, 4), rects, holdout_prompts_per_class=2,
                       info={"default_edits": [1, 3], "rectification_default_edits": [1]})


def test_ace_on_toy_bundle():
    from iceb.tasks.ace import ACETask

    task = ACETask(world="toy", bundle=toy_bundle())
    assert task.default_edits == (1, 3) and task.max_edits == 3 and task.default_metrics == ("iceb-cls",)
    inst = task.build(2)
    assert [r.source for r in inst.requests] == ["red circle", "gray cross"]
    r0 = inst.requests[0]
    assert (r0.destination, r0.seed, r0.source_id, r0.destination_id) == ("green star", 11, 0, 2)
    assert r0.templates == ("An image of {}", "A photo of {}", "{}")
    assert inst.counts() == {"requests": 2, "edit": 6, "edit_dest": 6, "general": 8, "alias": 12, "holdout": 4}
    e = inst.subset("edit")[0]
    assert (e.prompt, e.seed, e.true_class, e.dest_class, e.group) == ("An image of red circle", 1, 0, 2, r0.request_id)
    d = inst.subset("edit_dest")[0]
    assert (d.prompt, d.true_class, d.dest_class) == ("An image of green star", 2, 2)
    g = inst.subset("general")
    assert g[0].prompt == "a red circle in scene 0" and g[0].seed == 0
    a = inst.subset("alias")
    assert {p.prompt.split(" in ")[0] for p in a} == {"a crimson disc", "a ash cross", "a slate cross"}
    assert all(p.dest_class == (2 if p.true_class == 0 else 4) for p in a)
    h = inst.subset("holdout")
    assert [(p.prompt, p.seed, p.true_class) for p in h] == [("a green star in scene 0", 200, 2),
                                                             ("a green star in scene 1", 201, 2),
                                                             ("a pink ring in scene 0", 400, 4),
                                                             ("a pink ring in scene 1", 401, 4)]
    with pytest.raises(TaskError, match="1 to 3"):
        task.build(4)
    assert task.build(2).fingerprint() == inst.fingerprint()


def test_score_requests_edits_every_request_but_scores_a_fixed_sample_and_the_whole_holdout():
    from iceb.tasks import get_task
    from iceb.tasks.ace import ACETask
    from iceb.tasks.rectification import RectificationTask
    from iceb.toy.split import build_scaled_split
    from iceb.toy.world import ToyWorld

    bundle = build_scaled_split(ToyWorld(n_shapes=16, n_colours=16, n_patterns=6))
    full, sampled = ACETask(world="toy-1k", bundle=bundle), ACETask(world="toy-1k", bundle=bundle, score_requests=200)
    a, b = full.build(1000), sampled.build(1000)
    assert a.requests == b.requests and len(b.requests) == 1000  # every request is edited
    ids = b.info["scored_requests"]
    assert len(ids) == 200 and len(set(ids)) == 200 and "scored_requests" not in a.info
    assert {p.group for p in b.prompts if p.subset in ("edit", "edit_dest", "general")} == set(ids)
    assert {p.group.split("/")[0] for p in b.subset("alias")} <= set(ids)
    assert b.subset("holdout") == a.subset("holdout") and len({p.true_class for p in b.subset("holdout")}) == 256
    kept = {p for p in a.prompts if p.group.split("/")[0] in set(ids) or p.subset == "holdout"}
    assert set(b.prompts) == kept  # the sample's prompts are exactly the full run's, nothing else
    assert sampled.build(1000).info["scored_requests"] == ids  # deterministic
    assert "scored_requests" not in sampled.build(100).info  # N <= k: all of them
    assert ACETask(world="toy-1k", bundle=bundle, score_requests=200, split="dev").scored(24) == set(range(24))
    rect = RectificationTask(world="toy-1k", bundle=bundle, score_requests=50).build(300)
    assert len(rect.requests) == 300 and len(rect.info["scored_requests"]) == 50
    assert len({p.group for p in rect.subset("edit")}) == 50
    with pytest.raises(TaskError, match="positive number"):
        ACETask(world="toy-1k", bundle=bundle, score_requests=0)
    with pytest.raises(TaskError, match="does not score a sample"):
        get_task("smoke", world="toy", score_requests=10)


def test_alias_edits_remove_alias_prompts():
    from iceb.tasks.ace import ACETask

    b = toy_bundle()
    b = SplitBundle(b.name, b.world, b.version, b.concepts, b.edits + (EditPair(3, 4, 14, (1, 1, 1), "slate cross"),),
                    b.holdout)
    inst = ACETask(world="toy", bundle=b).build(4)
    assert inst.requests[3].source == "slate cross" and inst.requests[3].source_id == 3
    aliases = {p.prompt.split(" in ")[0] for p in inst.subset("alias")}
    assert aliases == {"a crimson disc", "a ash cross"}  # the edited alias is no longer an alias prompt
    assert [p.prompt for p in inst.subset("general")][-4:][0] == "a slate cross in scene 0"


def test_rectification_on_toy_bundle():
    from iceb.tasks.rectification import RectificationTask

    task = RectificationTask(world="toy", bundle=toy_bundle())
    assert task.default_edits == (1,) and task.max_edits == 1
    inst = task.build(1)
    r = inst.requests[0]
    got = (r.source, r.destination, r.kind, r.source_id, r.destination_id, r.seed)
    assert got == ("ash cross", "gray cross", "rectify", 3, 3, 21)
    assert all(p.true_class == p.dest_class == 3 for p in inst.prompts if p.subset != "holdout")
    assert [p.prompt for p in inst.subset("edit")] == ["An image of ash cross", "A photo of ash cross", "ash cross"]
    assert [p.seed for p in inst.subset("general")] == [300, 301, 302, 303]
    assert inst.counts()["holdout"] == 4


def test_toy_world_loads_shipped_split(tmp_path, monkeypatch):
    import iceb.tasks.ace as ace

    path = tmp_path / "toy" / "split.json"
    path.parent.mkdir()
    toy_bundle().save(path)
    monkeypatch.setattr(ace, "TOY_SPLIT", path)
    from iceb.tasks import get_task

    task = get_task("ace", world="toy")
    assert task.build(3).counts()["requests"] == 3
    monkeypatch.setattr(ace, "TOY_SPLIT", tmp_path / "missing.json")
    with pytest.raises(TaskError, match="missing"):
        get_task("rectification", world="toy").max_edits


def test_official_tasks(monkeypatch):
    if not (REF / "imgnet_aug_edit.json").is_file():
        pytest.skip("EMCID reference data not present")
    monkeypatch.setenv("ICEB_OFFICIAL_DATA", str(REF))
    from iceb.tasks import get_task

    ace = get_task("ace")
    assert ace.default_edits == (1, 5, 10, 20, 30, 40, 50, 100, 150, 200, 250, 300) and ace.max_edits == 300
    inst = ace.build(300)
    c = inst.counts()
    assert c == {"requests": 300, "edit": 900, "edit_dest": 900, "general": 1500, "alias": 224 * 5, "holdout": 1098}
    assert len({p.group for p in inst.subset("alias")}) == 224
    assert len({p.group for p in ace.build(10).subset("alias")}) == 12
    rect = get_task("rectification")
    assert rect.default_edits == (140,) and rect.max_edits == 140
    ri = rect.build(140)
    assert ri.requests[0].source == "man-eater" and ri.requests[0].destination == "white shark"
    assert ri.subset("general")[0].prompt == "a man-eater gracefully gliding through the deep ocean."
    with pytest.raises(TaskError):
        rect.build(141)


def test_tasks_show_cli(capsys, tmp_path, monkeypatch):
    import iceb.tasks.ace as ace
    from iceb.cli import main

    path = tmp_path / "split.json"
    toy_bundle().save(path)
    monkeypatch.setattr(ace, "TOY_SPLIT", path)
    assert main(["tasks", "show", "ace", "--world", "toy", "--edits", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["counts"]["alias"] == 12 and out["counts"]["requests"] == 2 and out["classes"]["holdout"] == 2


class _StubClassifier:
    """Deterministic mechanics stub: probabilities from the image's mean colour (no meaning)."""

    num_classes = 10

    def predict_proba(self, images):
        x = np.stack([im.reshape(-1, 3).mean(0) for im in images]) / 255.0
        logits = np.concatenate([x, x ** 2, x[:, :1] * x[:, 1:2], x[:, 2:] - x[:, :1], x[:, 1:2] - x[:, 2:]], 1)[:, :10]
        p = np.exp(logits - logits.max(1, keepdims=True))
        return p / p.sum(1, keepdims=True)


def test_score_names_end_to_end_on_tiny(tiny_model, tmp_path):
    from iceb.data.misunderstood_names import derive_rectifications, score_names
    from iceb.metrics.classifiers import ImageClassifier

    class Stub(ImageClassifier, _StubClassifier):
        num_classes = 10  # type: ignore[assignment]

        def predict_proba(self, images):
            return _StubClassifier.predict_proba(self, images)

    cfg = tiny_model.generation.replace(num_inference_steps=1, batch_size=4)
    names = {0: ("tench", "Tinca tinca"), 3: ("tiger shark",)}  # 3 names x 2 images
    out = tmp_path / "scores.json"
    scores = score_names(tiny_model.pipe, Stub(), names, images_per_name=2, config=cfg, out=out, progress=False)
    assert set(scores) == {"0", "3"} and set(scores["0"]) == {"tench", "Tinca tinca"}
    assert all(v["number"] == 2 and 0 <= v["mean"] <= 1 for row in scores.values() for v in row.values())
    assert json.loads(out.read_text()) == scores
    again = score_names(None, Stub(), names, images_per_name=2, config=cfg, out=out, progress=False)  # resumed
    assert again == scores
    fake = {"0": {"tench": 0.9, "Tinca tinca": 0.01}, "3": {"tiger shark": 0.3}}
    assert [(r.source, r.destination) for r in derive_rectifications(fake)] == [("Tinca tinca", "tench")]


def test_rectification_1k_from_official_scores(monkeypatch):
    if not (REF / "imgnet_prompts_cls.json").is_file():
        pytest.skip("EMCID reference data not present")
    monkeypatch.setenv("ICEB_OFFICIAL_DATA", str(REF))
    from iceb.tasks import get_task

    task = get_task("rectification-1k")
    # the official rule over all 1000 classes: as many rows as EMCID's older rectification_train.csv
    assert task.max_edits == 207 and task.default_edits == (207,)
    inst = task.build(207)
    assert len({r.source_id for r in inst.requests}) == 154
    assert all(p.true_class == p.dest_class for p in inst.prompts if p.subset != "holdout")
