"""FID and COCO captions with a small random feature extractor (never a download)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from iceb.metrics import METRICS
from iceb.metrics.classifiers import WeightsNotFoundError
from iceb.metrics.coco import coco_prompts, load_coco_captions
from iceb.metrics.fid import FID, FeatureFID, decode_feature, encode_feature, inception_pool3, load_stats
from iceb.tasks.base import EvalPrompt

REF_CSV = Path("/work/shared/reference/emcid/data/coco/coco_30k.csv")


class RandomFeatures(torch.nn.Module):
    num_features = 8

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 4, stride=4)
        self.calls = 0

    def forward(self, x):
        self.calls += len(x)
        return torch.relu(self.conv(x.float() / 255.0)).mean(dim=(2, 3))


def images(n, seed=0, shift=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.integers(0, 200, (1, 1, 3))
        im = base + rng.integers(0, 56, (32, 32, 3)) + shift
        out.append(np.clip(im, 0, 255).astype(np.uint8))
    return out


def test_feature_fid_closed_form():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8))
    a = FeatureFID(8)
    a.add(x, real=True)
    a.add(x, real=False)
    assert abs(a.compute()) < 1e-6  # a set against itself
    b = FeatureFID(8)
    b.add(x, real=True)
    b.add(x + 1.0, real=False)  # same covariance, mean moved by 1 in 8 dims: FID = ||shift||^2 = 8
    assert b.compute() == pytest.approx(8.0, abs=1e-6)
    mu, sigma, n = b.stats(real=True)  # statistics round trip through set_real
    np.testing.assert_allclose(mu, x.mean(0), atol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), atol=1e-10)
    c = FeatureFID(8)
    c.set_real(mu, sigma, n)
    c.add(x + 1.0, real=False)
    assert c.compute() == pytest.approx(8.0, abs=1e-6)
    f = rng.normal(size=8).astype(np.float32)
    np.testing.assert_array_equal(decode_feature(encode_feature(f)), f)


def write_coco(tmp_path: Path, n: int) -> tuple[Path, Path]:
    from PIL import Image

    root = tmp_path / "val2014"
    root.mkdir()
    csv_path = tmp_path / "coco.csv"
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case_number", "source", "prompt", "evaluation_seed", "coco_id"])
        for i, im in enumerate(images(n, seed=1)):
            w.writerow([i, "coco-30k", f"caption {i}", 100 + i, 1000 + i])
            Image.fromarray(np.kron(im, np.ones((2, 3, 1), np.uint8))).save(
                root / f"COCO_val2014_{1000 + i:012d}.jpg", quality=95)
    return tmp_path, csv_path


def test_coco_captions(tmp_path):
    _, csv_path = write_coco(tmp_path, 5)
    caps = load_coco_captions(3, csv_path)
    assert [c.coco_id for c in caps] == [1000, 1001, 1002] and caps[1].seed == 101
    ps = coco_prompts(2, csv_path)
    assert ps[0].prompt == "caption 0" and ps[0].seed == 100 and ps[0].subset == "holdout"
    with pytest.raises(ValueError, match="only 5 captions"):
        load_coco_captions(6, csv_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("case_number,source,prompt,evaluation_seed,coco_id\n0,c,a dog,notanint,3\n")
    with pytest.raises(ValueError, match="line 2"):
        load_coco_captions(None, bad)
    (tmp_path / "nocol.csv").write_text("prompt\nx\n")
    with pytest.raises(ValueError, match="missing column"):
        load_coco_captions(None, tmp_path / "nocol.csv")
    if REF_CSV.is_file():
        ref = load_coco_captions(None, REF_CSV)
        assert len(ref) == 30000 and ref[0].coco_id == 203564 and ref[0].seed == 41337


def test_fid_metric_with_real_stats_cache(tmp_path):
    root, csv_path = write_coco(tmp_path, 24)
    ext = RandomFeatures()
    kw = {"extractor": ext, "extractor_id": "rand8", "coco_root": str(root), "coco_csv": str(csv_path), "real_size": 32,
          "batch_size": 8, "cache": str(tmp_path / "cache"), "progress": False}
    m = FID(**kw)
    prompts = [EvalPrompt(f"caption {i}", 100 + i, "holdout") for i in range(24)]
    pre = m.score(images(24, seed=1), prompts)
    assert len(pre) == 24 and len(decode_feature(pre[0]["f"])) == 8
    same = {r.metric: r for r in m.aggregate(prompts, pre, pre)}
    assert abs(same["fid_pre_post"].value) < 1e-4
    # the generated images here are the real ones (up to JPEG and resizing): a small FID against real
    assert same["fid"].value == same["fid_pre"].value
    post = m.score(images(24, seed=1, shift=60), prompts)
    rows = {r.metric: r for r in m.aggregate(prompts, pre, post)}
    assert rows["fid_pre_post"].value > 100 * max(abs(same["fid_pre_post"].value), 1e-6)
    assert rows["fid"].value > 10 * rows["fid_pre"].value
    assert rows["fid"].higher_is_better is False and rows["fid"].subset == "holdout"
    # the real statistics were computed once and cached as safetensors
    files = list((tmp_path / "cache").glob("*.safetensors"))
    assert len(files) == 1 and "n24" in files[0].name
    mu, sigma, n = load_stats(files[0])
    assert n == 24 and mu.shape == (8,) and sigma.shape == (8, 8)
    calls = ext.calls
    for f in (root / "val2014").glob("*.jpg"):
        f.unlink()  # the cache must be used: no real image is read again
    again = {r.metric: r for r in FID(**kw).aggregate(prompts, pre, post)}
    assert again["fid"].value == pytest.approx(rows["fid"].value, rel=1e-9)
    assert ext.calls == calls
    # explicit statistics file
    given = {r.metric: r for r in FID(extractor=ext, real_stats=str(files[0])).aggregate(prompts, pre, post)}
    assert given["fid"].value == pytest.approx(rows["fid"].value, rel=1e-9)


def test_fid_without_real_images_reports_pre_post_only(monkeypatch):
    monkeypatch.delenv("ICEB_COCO_ROOT", raising=False)
    monkeypatch.delenv("ICEB_FID_REAL_STATS", raising=False)
    m = FID(extractor=RandomFeatures())
    prompts = [EvalPrompt(f"c{i}", i, "holdout") for i in range(6)]
    recs = m.score(images(6), prompts)
    with pytest.warns(UserWarning, match="ICEB_COCO_ROOT"):
        rows = m.aggregate(prompts, recs, recs)
    assert [r.metric for r in rows] == ["fid_pre_post"]


def test_missing_inception_weights(tmp_path, monkeypatch):
    monkeypatch.delenv("ICEB_FID_INCEPTION", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    m = METRICS.get("fid")()
    with pytest.raises(WeightsNotFoundError, match="ICEB_FID_INCEPTION"):
        m.score(images(1), [EvalPrompt("x", 0, "holdout")])


def test_inception_loads_safetensors_weights(tmp_path, monkeypatch):
    """The real extractor path, with random weights in the official layout (saved as safetensors)."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe
    from safetensors.torch import save_file

    monkeypatch.setattr(fe, "load_state_dict_from_url", lambda *a, **k: None)
    monkeypatch.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
    torch.manual_seed(0)
    rand = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    monkeypatch.undo()
    path = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in rand.state_dict().items()}, str(path))
    net, wid = inception_pool3(weights=str(path))
    assert wid.startswith("inception-")
    x = torch.from_numpy(np.stack(images(2)).transpose(0, 3, 1, 2).copy())
    f = net(x)
    assert f.shape == (2, 2048)
    torch.testing.assert_close(net(x), f)
