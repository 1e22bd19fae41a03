"""LPIPS mechanics: the backbone is loaded from a local file only (here random AlexNet weights in
torchvision's layout); missing weights are an error, never a silent random backbone."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("lpips")

from iceb.metrics import METRICS  # noqa: E402
from iceb.metrics.classifiers import WeightsNotFoundError  # noqa: E402
from iceb.metrics.lpips_metric import LPIPS, build_lpips  # noqa: E402
from iceb.tasks.base import EvalPrompt  # noqa: E402


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    sd = torchvision.models.alexnet(weights=None).state_dict()
    path = tmp_path_factory.mktemp("w") / "alexnet.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path, sd


def imgs(n, seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (96, 80, 3), dtype=np.uint8) for _ in range(n)]


def test_backbone_from_file_and_distances(weights):
    path, sd = weights
    model = build_lpips(path)
    torch.testing.assert_close(getattr(model.net.slice3, "6").weight, sd["features.6.weight"])
    torch.testing.assert_close(getattr(model.net.slice5, "10").bias, sd["features.10.bias"])
    from pathlib import Path

    import lpips

    heads = torch.load(Path(lpips.__file__).parent / "weights/v0.1/alex.pth", map_location="cpu",
                       weights_only=True)
    torch.testing.assert_close(model.lin0.model[1].weight, heads["lin0.model.1.weight"])  # real heads
    m = LPIPS(model=model)
    a, b = imgs(3, 0), imgs(3, 1)
    prompts = [EvalPrompt("p0", 0, "edit", 1, 2, "r0"), EvalPrompt("p1", 0, "edit", 1, 2, "r0"),
               EvalPrompt("h", 0, "holdout", 5, None, "h")]
    pa, pb = m.score(a, prompts), m.score(b, prompts)
    same = {(r.subset, r.metric): r.value for r in m.aggregate(prompts, pa, pa)}
    assert same["edit", "lpips"] == pytest.approx(0.0, abs=1e-7)
    rows = {(r.subset, r.metric): r for r in m.aggregate(prompts, pa, pb)}
    assert rows["edit", "lpips"].value > 0 and rows["edit", "lpips"].higher_is_better
    assert rows["holdout", "lpips"].higher_is_better is False
    d = m.distances([np.zeros((64, 64, 3), np.uint8)] * 2, [np.full((64, 64, 3), 255, np.uint8)] * 2)
    assert d[0] == pytest.approx(d[1]) and d[0] > 0
    # symmetric and deterministic
    th = [np.frombuffer(__import__("base64").b64decode(r["thumb"]), np.uint8).reshape(64, 64, 3) for r in pa]
    tb = [np.frombuffer(__import__("base64").b64decode(r["thumb"]), np.uint8).reshape(64, 64, 3) for r in pb]
    np.testing.assert_allclose(m.distances(th, tb), m.distances(tb, th), rtol=1e-5)
    np.testing.assert_array_equal(m.distances(th, tb), m.distances(th, tb))


def test_missing_backbone_is_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv("ICEB_LPIPS_ALEXNET", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    m = METRICS.get("lpips")()
    recs = m.score(imgs(2, 0), [EvalPrompt("a", 0, "edit")] * 2)  # thumbnails need no weights
    with pytest.raises(WeightsNotFoundError, match="ICEB_LPIPS_ALEXNET"):
        m.aggregate([EvalPrompt("a", 0, "edit")] * 2, recs, recs)
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"x": torch.zeros(1)}, str(bad))
    with pytest.raises(WeightsNotFoundError, match="not torchvision AlexNet"):
        build_lpips(bad)
