"""ICEB panel on hand-made probability tables; every expected number below is worked out by hand.

Classes 0..9. Each image's row puts the listed probabilities on its classes and spreads the rest evenly over
the other classes, so a listed class is top-1 when it beats the other listed class and the even share, and
top-5 exactly when its probability exceeds the even share.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from iceb.metrics import METRICS, get_metric
from iceb.metrics.classifiers import ImageClassifier
from iceb.metrics.panel import ICEBPanel, PanelError, group_mean, panel_values
from iceb.tasks.base import EvalPrompt

C = 10


def row(probs: dict[int, float]) -> np.ndarray:
    r = np.zeros(C)
    rest = [c for c in range(C) if c not in probs]
    r[rest] = (1.0 - sum(probs.values())) / len(rest)
    for c, p in probs.items():
        r[c] = p
    return r


class TableClassifier(ImageClassifier):
    """Image k (every pixel == k) gets row k of a fixed table."""

    name = "table"

    def __init__(self, table: np.ndarray):
        super().__init__()
        self.table = table

    @property
    def num_classes(self) -> int:
        return self.table.shape[1]

    def predict_proba(self, images):
        return np.stack([self.table[int(im[0, 0, 0])] for im in images])


def E(subset, true, dest, group):
    return EvalPrompt(f"{subset} {true}->{dest} {group}", 0, subset, true, dest, group)


# (prompt, pre probabilities, post probabilities)
CASES = [
    # edit: request r0 (0 -> 1) and r1 (2 -> 3), 3 images each
    (E("edit", 0, 1, "r0"), {0: .9, 1: .05}, {0: .1, 1: .8}),
    (E("edit", 0, 1, "r0"), {0: .8, 1: .1}, {0: .2, 1: .6}),
    (E("edit", 0, 1, "r0"), {0: .7, 1: .0}, {0: .3, 1: .4}),
    (E("edit", 2, 3, "r1"), {2: .7, 3: .1}, {2: .3, 3: .5}),
    (E("edit", 2, 3, "r1"), {2: .5, 3: .1}, {2: .0, 3: .5}),
    (E("edit", 2, 3, "r1"), {2: .3, 3: .4}, {2: .0, 3: .2}),
    # general: r0 has 2 images, r1 one: the per-request average differs from the flat one
    (E("general", 0, 1, "r0"), {0: 1.0, 1: .0}, {0: .0, 1: .9}),
    (E("general", 0, 1, "r0"), {0: .6, 1: .1}, {0: .2, 1: .5}),
    (E("general", 2, 3, "r1"), {2: .4, 3: .2}, {2: .4, 3: .2}),
    # alias of class 0 in request r0
    (E("alias", 0, 1, "r0"), {0: .5, 1: .1}, {0: .2, 1: .3}),
    # destination prompts of r0 (they name class 1)
    (E("edit_dest", 1, 1, "r0"), {1: .9}, {1: .6}),
    # a rectification request: prompts of class 4 whose destination is class 4
    (E("edit", 4, 4, "q"), {4: .2}, {4: .7}),
    (E("edit", 4, 4, "q"), {4: .4}, {4: .9}),
    # holdout classes 5 (2 images) and 6 (1 image)
    (E("holdout", 5, None, "h5"), {5: .8}, {5: .4}),
    (E("holdout", 5, None, "h5"), {5: .6}, {5: .4}),
    (E("holdout", 6, None, "h6"), {6: .5}, {6: .5}),
]


@pytest.fixture(scope="module")
def records():
    m = len(CASES)
    table = np.stack([row(c[1]) for c in CASES] + [row(c[2]) for c in CASES])
    panel = ICEBPanel(world="imagenet", classifier=TableClassifier(table))
    prompts = [c[0] for c in CASES]
    pre = panel.score([np.full((2, 2, 3), k, np.uint8) for k in range(m)], prompts)
    post = panel.score([np.full((2, 2, 3), m + k, np.uint8) for k in range(m)], prompts)
    json.dumps(pre), json.dumps(post)  # records are plain JSON
    return panel, prompts, pre, post


def values(records):
    panel, prompts, pre, post = records
    return {(v.subset, v.metric): v for v in panel.aggregate(prompts, pre, post)}


def test_records_hold_the_needed_classes(records):
    _, _, pre, post = records
    r = pre[0]
    assert r["p"] == {"0": pytest.approx(.9), "1": pytest.approx(.05)}
    assert r["top1"] == {"0": True, "1": False}
    assert r["top5"] == {"0": True, "1": True}  # .05 > the even share .05/8
    assert r["top5_ids"][:2] == [0, 1] and len(r["top5_ids"]) == 5
    assert r["top5_p"][0] == pytest.approx(.9)
    assert pre[2]["top5"]["1"] is False  # probability 0 is below the even share .3/8
    assert post[5]["top1"] == {"2": False, "3": True}
    assert set(pre[13]["p"]) == {"5"}  # holdout: no destination


def test_efficacy(records):
    v = values(records)
    # r0: source .8 -> .2 (forget .6); r1: .5 -> .1 (forget .4)
    assert v["edit", "source_forget"].value == pytest.approx(.5)
    assert v["edit", "source_forget"].bound == pytest.approx(.65)
    # r0: dest .05 -> .6 (+.55); r1: .2 -> .4 (+.2)
    assert v["edit", "source2dest"].value == pytest.approx(.375)
    assert v["edit", "source2dest"].bound == pytest.approx(.875)
    assert v["edit", "pre_source"].value == pytest.approx(.65)
    assert v["edit", "post_dest"].value == pytest.approx(.5)
    assert v["edit", "source_forget"].n == 6  # the rectification prompts are not in it
    # top-1: source acc r0 1 -> 0, r1 2/3 -> 0; dest acc r0 0 -> 1, r1 1/3 -> 1
    assert v["edit", "source_forget_top1"].value == pytest.approx(5 / 6)
    assert v["edit", "source_forget_top1"].bound == pytest.approx(5 / 6)
    assert v["edit", "source2dest_top1"].value == pytest.approx(5 / 6)
    assert v["edit", "source2dest_top1"].bound == pytest.approx(5 / 6)
    # top-5 dest hits: pre r0 2/3, r1 1; post 1 and 1
    assert v["edit", "source2dest_top5"].value == pytest.approx(1 / 6)
    assert v["edit", "pre_dest_top5"].value == pytest.approx(5 / 6)


def test_generalization_averages_per_request(records):
    v = values(records)
    # r0: 0.8 -> 0.1 (.7), r1: .4 -> .4 (0): mean of requests .35, not the flat 1.4/3
    assert v["general", "source_forget"].value == pytest.approx(.35)
    assert v["general", "source_forget"].bound == pytest.approx(.6)
    assert v["general", "source2dest"].value == pytest.approx(.325)
    assert v["general", "source2dest"].bound == pytest.approx(.875)


def test_alias_dest_holdout_rectification(records):
    v = values(records)
    assert v["alias", "alias2dest"].value == pytest.approx(.2)
    assert v["alias", "alias2dest"].bound == pytest.approx(.9)
    assert v["alias", "alias_forget"].value == pytest.approx(.3)
    assert v["edit_dest", "dest_forget"].value == pytest.approx(.3)
    assert v["edit_dest", "dest_forget"].higher_is_better is False
    # classes 5: .7 -> .4, 6: .5 -> .5
    assert v["holdout", "holdout_delta"].value == pytest.approx(-.15)
    assert v["holdout", "holdout_delta"].bound == pytest.approx(-.6)
    assert v["holdout", "holdout_delta_top1"].value == pytest.approx(0.0)  # still top-1 after
    # rectification: .3 -> .8, no forget panel for it
    assert v["edit", "rectify_gain"].value == pytest.approx(.5)
    assert v["edit", "rectify_gain"].bound == pytest.approx(.7)
    assert ("general", "rectify_gain") not in v
    assert v["-", "average_score"].value == pytest.approx((.325 - .15) / 2)


def test_errors_and_registry(records):
    panel, prompts, pre, post = records
    with pytest.raises(PanelError, match="misaligned"):
        panel.aggregate(prompts, pre[:-1], post)
    stale = [dict(r) for r in pre]
    stale[0] = {**stale[0], "p": {"7": .1}}
    with pytest.raises(PanelError, match="stale record cache"):
        panel.aggregate(prompts, stale, post)
    assert METRICS.get("iceb-cls") is ICEBPanel
    m = get_metric("iceb-cls", world="toy")
    assert m.classifier_name == "toy" and "toy" in m.record_key()
    assert get_metric("iceb-cls", world="imagenet").classifier_name == "vit-b16"
    metric = get_metric("iceb-cls", world="imagenet", classifier="efficientnet-lite0")
    assert metric.classifier_name == "efficientnet-lite0"


def test_record_keys_name_the_classifier_and_its_weights():
    """Retrained or swapped classifier weights must not reuse cached per-image records."""
    import torch

    from iceb.metrics.classifiers import ImageClassifier

    class Lin(ImageClassifier):
        name = "lin"

        def __init__(self, seed: int) -> None:
            super().__init__()
            torch.manual_seed(seed)
            self.net = torch.nn.Linear(3, 4)

        num_classes = 4

        def predict_proba(self, images):
            raise NotImplementedError

    a, a2, b = (ICEBPanel(world="toy", classifier=Lin(s)) for s in (0, 0, 1))
    assert a.record_key() == a2.record_key()
    assert a.record_key() != b.record_key()
    assert "lin" in a.record_key() and "toy" in a.record_key()
    assert group_mean(["a", "a", "b"], [1.0, 0.0, 1.0]) == pytest.approx(.75)
    assert panel_values([], [], []) == []
