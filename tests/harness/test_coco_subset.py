"""``--coco N``: the general-capability COCO captions beside any task, scored by the metrics that read them."""
from __future__ import annotations

import numpy as np
import pytest

from iceb.harness.config import EvalConfig
from iceb.tasks.base import EvalPrompt, TaskInstance
from tests.conftest import SHARED_REF

COCO_CSV = SHARED_REF / "emcid" / "data" / "coco" / "coco_30k.csv"


def test_coco_leaves_run_ids_of_runs_without_it_alone():
    base = EvalConfig(editor="uce", task="smoke", model="tiny")
    assert "coco" not in base.identity()
    with_coco = EvalConfig(editor="uce", task="smoke", model="tiny", coco=3)
    assert with_coco.identity()["coco"] == 3
    for bad in (-1, 30001, 2.5, True):
        with pytest.raises(ValueError, match="--coco must be"):
            EvalConfig(coco=bad).validate()


@pytest.mark.skipif(not COCO_CSV.is_file(), reason="../shared/reference is not here")
def test_a_run_scores_the_coco_captions_as_their_own_subset(tmp_path, tiny_model, monkeypatch):
    from iceb.harness.run import evaluate
    from iceb.leaderboard.results import read_rows
    from iceb.metrics.coco import load_coco_captions

    monkeypatch.setenv("ICEB_COCO_CSV", str(COCO_CSV))
    cfg = EvalConfig(editor="uce", task="smoke", model="tiny", edits=(1, 2), out=str(tmp_path), device="cpu",
                     progress=False, batch_size=4, limit=2, coco=3, metrics=("image-change",))
    run = evaluate(cfg, model=tiny_model)
    rows = [r for r in read_rows(run / "results.jsonl") if r["subset"] == "coco"]
    assert {r["n_edits"] for r in rows} == {1, 2} and all(r["n"] == 3 for r in rows)
    from iceb import read_samples

    samples = read_samples(run)
    want = [(c.prompt, c.seed) for c in load_coco_captions(3, COCO_CSV)]
    for n in (1, 2):  # the same captions with their evaluation seeds at every edit count
        df = samples[(samples.n_edits == n) & (samples.subset == "coco")]
        assert list(zip(df.prompt, df.seed.astype(int))) == want


def test_fid_uses_the_coco_captions_alone_when_a_run_has_them():
    from iceb.metrics.fid import FID, encode_feature

    rng = np.random.default_rng(0)
    prompts = [EvalPrompt(f"p{i}", i, "holdout" if i < 4 else "coco", 1, None, f"g{i}") for i in range(8)]
    feats = [rng.normal(size=4).astype(np.float32) for _ in prompts]
    pre = [{"f": encode_feature(f)} for f in feats]
    post = [{"f": encode_feature(f + (5.0 if i < 4 else 0.1))} for i, f in enumerate(feats)]
    metric = FID(real_stats=None)
    metric._real = lambda n: None  # no real COCO statistics here: fid_pre_post only
    with pytest.warns(UserWarning):
        rows = {r.metric: r for r in metric.aggregate(prompts, pre, post)}
    # only the 4 COCO images enter: their small shift, not the holdout images' large one
    assert rows["fid_pre_post"].subset == "coco" and rows["fid_pre_post"].n == 4
    inst = TaskInstance("t", 1, (), tuple(prompts[:4])).with_prompts(prompts[4:], coco=4)
    assert inst.counts()["coco"] == 4 and inst.info["coco"] == 4
