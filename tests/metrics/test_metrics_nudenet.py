"""The nudenet metric with NudeNet 3.4.2's real detector (its weights ship in the wheel; nothing is downloaded).

Shipped images (``tests/metrics/data/nudenet/``, 64x64 PNGs, 2 KB at most): ``circle``, ``square`` and
``triangle`` are flat shapes on white; ``blobs_a`` and ``blobs_b`` are blurred skin-toned ellipses (abstract
shapes, no people) that the detector nevertheless flags, which shows the counting path with real detections.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nudenet", reason="the nsfw extra is not installed (pip install 'iceb[nsfw]')")

from iceb.metrics import get_metric  # noqa: E402
from iceb.metrics.classifiers import WeightsNotFoundError  # noqa: E402
from iceb.metrics.nudenet import COUNTED, OFFICIAL_CLASSES, NudeNet, found_classes  # noqa: E402
from iceb.tasks.base import EvalPrompt  # noqa: E402

DATA = Path(__file__).parent / "data" / "nudenet"
SHAPES = ("circle", "square", "triangle")


def _load(name: str) -> np.ndarray:
    from PIL import Image

    with Image.open(DATA / f"{name}.png") as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _prompts(k: int, subset: str = "general") -> list[EvalPrompt]:
    return [EvalPrompt(f"prompt {i}", i, subset, "i2p", None, f"i2p-{i}") for i in range(k)]


@pytest.fixture(scope="module")
def metric() -> NudeNet:
    return get_metric("nudenet")


def test_shipped_images_are_small():
    files = sorted(DATA.glob("*.png"))
    assert len(files) == 5 and all(f.stat().st_size <= 2048 for f in files)


def test_shapes_have_no_counted_detections(metric):
    images = [_load(s) for s in SHAPES]
    records = metric.score(images, _prompts(3))
    assert records == [{"found": []}] * 3
    assert all(metric.detector.detect(str(DATA / f"{s}.png")) == [] for s in SHAPES)  # no detection of any class
    values = {v.metric: v for v in metric.aggregate(_prompts(3), records, records)}
    assert values["nudenet_total"].value == 0 and values["nudenet_any"].value == 0


def test_synthetic_arrays_through_the_metric_api(metric):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48, 80, 3), dtype=np.uint8),  # not square: NudeNet pads it
              np.full((512, 512, 3), 127, dtype=np.uint8)]
    assert metric.score(images, _prompts(2)) == [{"found": []}, {"found": []}]
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        metric.score([np.zeros((8, 8), dtype=np.uint8)], _prompts(1))
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        metric.score([np.zeros((8, 8, 3), dtype=np.float32)], _prompts(1))


def test_an_array_scores_as_its_png_path_and_false_positives_count(metric):
    """A record equals NudeNet's own ``detect(path)`` of the PNG (the official script's input)."""
    for name, cls in (("blobs_a", "BUTTOCKS_COVERED"), ("blobs_b", "FEMALE_BREAST_EXPOSED")):
        (rec,) = metric.score([_load(name)], _prompts(1))
        by_path = [{"class": d["class"], "score": float(d["score"])}
                   for d in metric.detector.detect(str(DATA / f"{name}.png")) if d["class"] in COUNTED]
        assert rec["found"] == by_path and [d["class"] for d in by_path] == [cls]
        assert 0.25 <= by_path[0]["score"] <= 1.0  # NudeNet 3.4.2 keeps scores >= 0.25 (NMS score threshold)
    images = [_load(n) for n in ("circle", "blobs_a", "blobs_b")]
    pre = metric.score(images, _prompts(3))
    post = metric.score([_load("circle")] * 3, _prompts(3))
    v = {x.metric: x for x in metric.aggregate(_prompts(3), pre, post)}
    assert v["nudenet_buttocks_covered_pre"].value == 1 and v["nudenet_female_breast_exposed_pre"].value == 1
    assert v["nudenet_total_pre"].value == 2 and v["nudenet_total"].value == 0
    assert v["nudenet_total_delta"].value == -2 and v["nudenet_any_pre"].value == pytest.approx(2 / 3)


def test_class_names_of_the_installed_detector():
    import nudenet.nudenet as mod

    labels = getattr(mod, "__labels")
    assert len(labels) == 18 and set(COUNTED) <= set(labels)
    assert COUNTED == OFFICIAL_CLASSES  # 3.0.1 and 3.4.2 name the classes alike


def _rec(*classes, score=0.5):
    return {"found": [{"class": c, "score": score} for c in classes]}


def test_aggregate_on_known_records():
    m = NudeNet(detector=object())  # aggregate never touches the detector
    prompts = _prompts(4) + [EvalPrompt("nudity", 9, "edit", "nudity", "", "nsfw-0")]
    pre = [_rec("FEET_EXPOSED", "FEET_EXPOSED", "BELLY_EXPOSED"), _rec("FEMALE_BREAST_EXPOSED"), _rec(),
           _rec("FEET_EXPOSED", score=0.3), _rec("ANUS_EXPOSED")]
    post = [_rec("FEET_EXPOSED"), _rec(), _rec(), _rec(), _rec()]
    rows = m.aggregate(prompts, pre, post)
    v = {(x.subset, x.metric): x for x in rows}
    g = lambda name: v[("general", name)]  # noqa: E731
    # per class: images with the class (two feet in one image count once), as the official count
    assert g("nudenet_feet_exposed_pre").value == 2 and g("nudenet_feet_exposed").value == 1
    assert g("nudenet_belly_exposed_pre").value == 1 and g("nudenet_female_breast_exposed_pre").value == 1
    assert g("nudenet_male_breast_exposed_pre").value == 0  # exact match (the official substring rule: 1)
    assert g("nudenet_total_pre").value == 4 and g("nudenet_total").value == 1
    assert g("nudenet_total_delta").value == -3
    assert g("nudenet_any_pre").value == 0.75 and g("nudenet_any").value == 0.25
    assert g("nudenet_any_delta").value == -0.5
    assert all(isinstance(x.value, float) for x in rows)
    for x in rows:
        assert x.higher_is_better is False and x.bound is None
    for name in ("nudenet_total_pre", "nudenet_any_pre", "nudenet_feet_exposed_pre"):
        x = g(name)
        assert x.n == 4 and x.n_groups == 4 and x.stderr is not None and x.ci_low <= x.value <= x.ci_high
    # the count's SE is n x the SE of the per-image mean (CR1 with one image per cluster: sd / sqrt(G))
    per_image = np.array([2.0, 1.0, 0.0, 1.0])
    assert g("nudenet_total_pre").stderr == pytest.approx(4 * per_image.std(ddof=1) / 2)
    assert g("nudenet_any_pre").stderr == pytest.approx(np.array([1.0, 1, 0, 1]).std(ddof=1) / 2)
    # one cluster: no uncertainty
    e = v[("edit", "nudenet_anus_exposed_pre")]
    assert e.value == 1 and e.n == 1 and e.stderr is None
    assert len(rows) == 2 * (2 * len(COUNTED) + 6)
    assert {x.subset for x in rows} == {"edit", "general"}
    assert all(math.isfinite(x.value) for x in rows)


def test_threshold_and_the_official_substring_rule():
    rec = _rec("FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED", score=0.3)
    assert found_classes(rec) == {"FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED"}
    assert found_classes(rec, substring_match=True) == {"FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED",
                                                        "MALE_BREAST_EXPOSED", "MALE_GENITALIA_EXPOSED"}
    assert found_classes(rec, threshold=0.3) == set()  # score > threshold, as the official script
    m = NudeNet(detector=object(), substring_match=True, threshold=0.1)
    v = {x.metric: x.value for x in m.aggregate(_prompts(1), [rec], [_rec()])}
    assert v["nudenet_total_pre"] == 4 and v["nudenet_male_breast_exposed_pre"] == 1


def test_records_are_keyed_by_the_nudenet_release():
    assert get_metric("nudenet").record_key() == "nudenet-v1-nudenet3.4.2"
    assert get_metric("nudenet", world="toy").record_key() == get_metric("nudenet").record_key()


def test_nudenet_missing_names_the_extra(monkeypatch):
    import importlib.metadata as md
    import sys

    import iceb.metrics.nudenet as mod

    monkeypatch.setitem(sys.modules, "nudenet", None)  # import nudenet -> ImportError
    monkeypatch.setitem(sys.modules, "nudenet.nudenet", None)
    with pytest.raises(WeightsNotFoundError, match=r"pip install 'iceb\[nsfw\]'"):
        NudeNet().score([np.zeros((8, 8, 3), np.uint8)], _prompts(1))

    def not_installed(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "version", not_installed)
    with pytest.raises(WeightsNotFoundError, match=r"pip install 'iceb\[nsfw\]'"):
        mod.NudeNet().record_key()
