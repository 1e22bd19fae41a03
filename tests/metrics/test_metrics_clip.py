"""CLIP score mechanics on a random-weight OpenCLIP model built from open_clip's shipped ViT-S-32 config."""
from __future__ import annotations

import numpy as np
import pytest

from iceb.metrics import METRICS
from iceb.metrics.classifiers import WeightsNotFoundError
from iceb.metrics.clip_score import CLIPScore
from iceb.tasks.base import EvalPrompt


@pytest.fixture(scope="module")
def metric():
    import open_clip
    import torch

    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-S-32", pretrained=None)
    return CLIPScore(model=model, preprocess=preprocess, tokenizer=open_clip.get_tokenizer("ViT-S-32"),
                     batch_size=2)


def images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8) for i in range(n)]


def test_clip_score_is_100_cosine(metric):
    import torch
    from PIL import Image

    ims, caps = images(3), ["a cat", "a dog on a sofa", "espresso"]
    s = metric.embed(ims, caps)
    m = metric._model
    with torch.no_grad():
        fi = m.encode_image(metric._preprocess(Image.fromarray(ims[1]))[None])
        ft = m.encode_text(metric._tokenizer([caps[1]]))
    ref = 100 * torch.nn.functional.cosine_similarity(fi, ft).item()
    assert s[1] == pytest.approx(ref, abs=1e-4)
    assert np.all(np.abs(s) <= 100)
    metric.batch_size = 3  # batching does not change the numbers; repetition is deterministic
    np.testing.assert_allclose(metric.embed(ims, caps), s, atol=1e-4)
    metric.batch_size = 2
    np.testing.assert_array_equal(metric.embed(ims, caps), s)


def test_clip_records_and_aggregate(metric):
    prompts = [EvalPrompt("a cat", 0, "edit", 1, 2, "r0"), EvalPrompt("a cat", 1, "edit", 1, 2, "r0"),
               EvalPrompt("a dog", 0, "edit", 3, 4, "r1"), EvalPrompt("a fox", 0, "holdout", 5, None, "h")]
    rec = metric.score(images(4), prompts)
    assert set(rec[0]) == {"clip"} and isinstance(rec[0]["clip"], float)
    pre = [{"clip": v} for v in (30.0, 20.0, 10.0, 25.0)]
    post = [{"clip": v} for v in (20.0, 20.0, 4.0, 24.0)]
    v = {(r.subset, r.metric): r for r in metric.aggregate(prompts, pre, post)}
    assert v["edit", "clip_score_pre"].value == pytest.approx((25 + 10) / 2)  # per request, then mean
    assert v["edit", "clip_score"].value == pytest.approx((20 + 4) / 2)
    assert v["edit", "clip_score_delta"].value == pytest.approx(-5.5)
    assert v["edit", "clip_score_delta"].higher_is_better is False
    assert v["holdout", "clip_score_delta"].value == pytest.approx(-1.0)
    assert v["holdout", "clip_score"].higher_is_better is True


def test_missing_clip_weights(tmp_path, monkeypatch):
    monkeypatch.delenv("ICEB_CLIP_WEIGHTS", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    m = METRICS.get("clip-score")()
    with pytest.raises(WeightsNotFoundError, match="ICEB_CLIP_WEIGHTS"):
        m.score(images(1), [EvalPrompt("x", 0, "holdout")])
    with pytest.raises(WeightsNotFoundError, match="safetensors"):
        CLIPScore(weights=str(tmp_path / "ViT-L-14.pt")).score(images(1), [EvalPrompt("x", 0, "holdout")])
