"""Neighbour strata of the holdout (iceb.data.neighbours) and the panel's ``holdout:<stratum>`` rows.

Hand-checked ImageNet cases (class ids of ``iceb.data.imagenet``, WordNet 3.0 from ``wordnet_1k.json``):
151 Chihuahua and 152 Japanese spaniel are both "toy dog" (siblings); 151 and 156 Blenheim spaniel meet at
"toy dog" through "English toy spaniel" (path 1 + 2 = 3: near); 151 and 207 golden retriever meet only at
"dog" (2 + 3 = 5: far); 151 and 817 sports car are far; 817 and 511 convertible are both "car" (siblings).
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from iceb.data.neighbours import (
    IMAGENET_STRATA,
    TOY_STRATA,
    imagenet_relation,
    imagenet_stratum,
    toy_relation,
    toy_stratum,
)
from iceb.data.split_bundle import Concept, PromptSeed, SplitBundle
from iceb.metrics.classifiers import ImageClassifier
from iceb.metrics.panel import ICEBPanel, holdout_strata
from iceb.tasks.base import EvalPrompt, TaskInstance

CHIHUAHUA, JAPANESE_SPANIEL, BLENHEIM, GOLDEN_RETRIEVER, SPORTS_CAR, CONVERTIBLE = 151, 152, 156, 207, 817, 511


def test_imagenet_relations_by_hand():
    assert imagenet_relation(CHIHUAHUA, JAPANESE_SPANIEL) == "sibling"
    assert imagenet_relation(SPORTS_CAR, CONVERTIBLE) == "sibling"
    assert imagenet_relation(CHIHUAHUA, BLENHEIM) == "near"
    assert imagenet_relation(CHIHUAHUA, GOLDEN_RETRIEVER) == "far"
    assert imagenet_relation(CHIHUAHUA, SPORTS_CAR) == "far"
    assert imagenet_relation(SPORTS_CAR, CHIHUAHUA) == "far"


def test_imagenet_nearest_source_wins():
    assert imagenet_stratum(JAPANESE_SPANIEL, [SPORTS_CAR, CHIHUAHUA]) == "sibling"
    assert imagenet_stratum(BLENHEIM, [SPORTS_CAR, CHIHUAHUA]) == "near"
    assert imagenet_stratum(CONVERTIBLE, [CHIHUAHUA]) == "far"
    assert imagenet_stratum(CONVERTIBLE, [CHIHUAHUA, SPORTS_CAR]) == "sibling"
    with pytest.raises(ValueError, match="1000 classes"):
        imagenet_relation(1000, 0)


def _toy(cid, shape, colour, pattern="solid"):
    return Concept(cid, f"c{cid}", (), (PromptSeed("a {}", cid),), {"shape": shape, "colour": colour,
                                                                    "pattern": pattern})


def test_toy_relations_by_hand():
    red_circle, red_square, blue_circle, blue_square = (_toy(0, "circle", "red"), _toy(1, "square", "red"),
                                                       _toy(2, "circle", "blue"), _toy(3, "square", "blue"))
    striped_red_circle = _toy(4, "circle", "red", "striped")
    assert toy_relation(blue_circle, red_circle) == "shares-shape"
    assert toy_relation(red_square, red_circle) == "shares-colour"
    assert toy_relation(blue_square, red_circle) == "shares-neither"
    assert toy_relation(striped_red_circle, red_circle) == "shares-both"
    # nearest first: both > shape > colour > neither
    assert toy_stratum(blue_circle, [red_square, red_circle]) == "shares-shape"
    assert toy_stratum(red_square, [blue_circle, red_circle]) == "shares-colour"
    assert toy_stratum(blue_circle, [red_square, blue_square]) == "shares-colour"
    assert toy_stratum(blue_circle, [blue_square, red_circle]) == "shares-shape"  # shape beats colour
    assert toy_stratum(striped_red_circle, [blue_circle, red_circle]) == "shares-both"
    # the toy world's own concepts (attributes as attributes)
    from iceb.toy.world import ToyWorld

    w = ToyWorld(n_shapes=3, n_colours=3)
    a = w.concepts[0]
    same_shape = next(c for c in w.concepts if c.shape == a.shape and c.colour != a.colour)
    other = next(c for c in w.concepts if c.shape != a.shape and c.colour != a.colour)
    assert toy_stratum(same_shape, [a]) == "shares-shape" and toy_stratum(other, [a]) == "shares-neither"


def _task(name, world):
    from iceb.tasks import get_task

    return get_task(name, world=world)


def _official_available() -> bool:
    try:
        _task("ace", "imagenet").bundle
    except Exception:
        return False
    return True


CASES = [("ace", "toy"), ("rectification", "toy"), ("ace-1k", "imagenet")]
if os.environ.get("ICEB_OFFICIAL_DATA") or _official_available():
    CASES += [("ace", "imagenet"), ("rectification", "imagenet")]


@pytest.mark.parametrize("name,world", CASES)
def test_every_holdout_prompt_has_a_stratum(name, world):
    task = _task(name, world)
    for n in (1, min(5, task.max_edits)):
        inst = task.build(n)
        h = inst.subset("holdout")
        assert h and all(p.stratum in (TOY_STRATA if world == "toy" else IMAGENET_STRATA) for p in h)
        assert all(p.stratum == "" for p in inst.prompts if p.subset != "holdout")
        # a class's prompts share its stratum; it is the stratum against the requests' sources
        by_class = {}
        for p in h:
            by_class.setdefault(p.true_class, set()).add(p.stratum)
        assert all(len(s) == 1 for s in by_class.values())
        if world == "imagenet":
            sources = [r.source_id for r in inst.requests]
            assert all(p.stratum == imagenet_stratum(p.true_class, sources) for p in h)
        counts = inst.strata()
        assert sum(v["prompts"] for v in counts.values()) == len(h)
        assert sum(v["classes"] for v in counts.values()) == len(by_class)


@pytest.mark.parametrize("name,world", CASES)
def test_strata_are_deterministic(name, world):
    a, b = _task(name, world).build(3), _task(name, world).build(3)
    assert [p.stratum for p in a.prompts] == [p.stratum for p in b.prompts]
    assert a.fingerprint() == b.fingerprint()


def test_fingerprint_ignores_an_empty_stratum_and_hashes_a_set_one():
    from dataclasses import asdict

    from iceb.utils.hashing import stable_hash

    p = EvalPrompt("a photo of x", 1, "holdout", 3, None, "holdout:3")
    inst = TaskInstance("t", 1, (), (p,))
    # as before the fields existed: asdict without "stratum" (and the later "labels", "replicate")
    old = {k: v for k, v in asdict(p).items() if k not in ("stratum", "labels", "replicate")}
    assert inst.fingerprint() == stable_hash("task-instance", [], [old])
    q = EvalPrompt("a photo of x", 1, "holdout", 3, None, "holdout:3", "far")
    assert TaskInstance("t", 1, (), (q,)).fingerprint() != inst.fingerprint()


class RandomLinear(ImageClassifier):
    """Random weights (mechanics only): softmax of a fixed random linear map of an image's mean colour."""

    name = "random-linear"

    def __init__(self, classes: int, seed: int = 0) -> None:
        super().__init__()
        self._n = classes
        self.w = np.random.default_rng(seed).normal(size=(3, classes)) * 3.0

    @property
    def num_classes(self) -> int:
        return self._n

    def predict_proba(self, images):
        x = np.stack([im.reshape(-1, 3).mean(0) / 255.0 for im in images]) @ self.w
        e = np.exp(x - x.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)


def _images(prompts, salt):
    return [np.random.default_rng([p.seed % 2**32, salt]).integers(0, 256, (4, 4, 3), dtype=np.uint8)
            for p in prompts]


def _classes(world):
    if world == "toy":
        return len(_task("ace", "toy").bundle.concepts)
    return 1000


@pytest.mark.parametrize("name,world", [("ace", "toy"), ("ace-1k", "imagenet")])
def test_panel_rows_per_stratum(name, world):
    inst = _task(name, world).build(5)
    # a few holdout classes per stratum keeps it quick; every class keeps all its prompts
    keep, per = set(), {}
    for p in inst.subset("holdout"):
        if per.get(p.stratum, 0) < 6 or p.true_class in keep:
            if p.true_class not in keep:
                keep.add(p.true_class)
                per[p.stratum] = per.get(p.stratum, 0) + 1
    prompts = [p for p in inst.prompts if p.subset != "holdout" or p.true_class in keep]
    panel = ICEBPanel(world=world, classifier=RandomLinear(_classes(world)))
    pre = panel.score(_images(prompts, 0), prompts)
    post = panel.score(_images(prompts, 1), prompts)
    rows = panel.aggregate(prompts, pre, post)

    # the rows without strata are the rows of the same prompts with their strata dropped
    from dataclasses import replace

    plain = [replace(p, stratum="") for p in prompts]
    pooled = panel.aggregate(plain, pre, post)
    assert [r for r in rows if not r.subset.startswith("holdout:")] == pooled

    strata = holdout_strata(prompts)
    assert set(strata) == {p.stratum for p in prompts if p.subset == "holdout"} and len(strata) >= 2
    by = {(r.subset, r.metric): r for r in rows}
    h = [p for p in prompts if p.subset == "holdout"]
    for metric in ("holdout_delta", "holdout_delta_top1", "holdout_delta_top5", "pre_true", "post_true",
                   "pre_true_top5"):
        pooled_row = by[("holdout", metric)]
        total, weighted = 0, 0.0
        for s in strata:
            r = by[(f"holdout:{s}", metric)]
            n = sum(p.stratum == s for p in h)
            assert r.n == n and r.n_groups == len({p.group for p in h if p.stratum == s})
            total += r.n
            weighted += r.n * r.value
        # every class has as many prompts, so the image-weighted mean over strata is the pooled value
        assert total == pooled_row.n
        assert weighted / total == pytest.approx(pooled_row.value, abs=1e-12)
    for s in strata:
        r = by[(f"holdout:{s}", "holdout_delta")]
        assert r.bound == pytest.approx(-by[(f"holdout:{s}", "pre_true")].value)
        if r.n_groups > 1:
            assert r.stderr is not None and r.ci_low <= r.value <= r.ci_high


def test_holdout_strata_order():
    ps = [EvalPrompt("x", i, "holdout", i, None, f"holdout:{i}", s)
          for i, s in enumerate(["far", "zeta", "sibling", "near", "far"])]
    assert holdout_strata(ps) == ["sibling", "near", "far", "zeta"]
    assert holdout_strata([EvalPrompt("x", 0, "holdout", 0)]) == []


def test_a_bundle_without_attributes_has_no_strata():
    b = SplitBundle("t", "toy", "1", tuple(Concept(i, f"c{i}", (), tuple(PromptSeed("a {}", k) for k in range(3)))
                                          for i in range(3)), (), (1, 2), (), ("{}",), 3)
    from iceb.data.neighbours import stratifier

    assert stratifier(b, [0])(1) == ""
