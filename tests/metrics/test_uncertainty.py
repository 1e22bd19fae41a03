"""Standard errors and bootstrap intervals with requests as clusters, on tables worked by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from iceb.metrics.uncertainty import bootstrap, cluster_stats, clusters, combine_mean

# Three requests, two images each:
#   A: 0.2, 0.4  (sum 0.6, mean 0.3)
#   B: 0.5, 0.7  (sum 1.2, mean 0.6)
#   C: 0.8, 1.0  (sum 1.8, mean 0.9)
# Mean over images: 3.6 / 6 = 0.6 (= the mean of request means, the sizes being equal).
# Cluster-robust SE: residuals S_g - n_g * 0.6 = -0.6, 0, 0.6; sum of squares 0.72; times G/(G-1) = 3/2: 1.08;
#   sqrt(1.08) / 6 = sqrt(0.03) = 0.1732050807...
# SE of the request means: sd(0.3, 0.6, 0.9; ddof=1) = sqrt((0.09 + 0 + 0.09) / 2) = 0.3; 0.3 / sqrt(3), the same.
VALUES = [0.2, 0.4, 0.5, 0.7, 0.8, 1.0]
GROUPS = ["A", "A", "B", "B", "C", "C"]


@pytest.mark.parametrize("weighting", ["images", "groups"])
def test_hand_worked_table(weighting):
    st = cluster_stats(VALUES, GROUPS, weighting=weighting)
    assert st.n_groups == 3
    assert st.mean == pytest.approx(0.6, abs=1e-12)
    assert st.stderr == pytest.approx(math.sqrt(0.03), abs=1e-12)
    assert st.stderr == pytest.approx(0.3 / math.sqrt(3), abs=1e-12)
    assert st.ci_low <= st.mean <= st.ci_high
    # a replicate is a mean of three request means from {0.3, 0.6, 0.9}: it lies in [0.3, 0.9]
    assert 0.3 - 1e-12 <= st.ci_low < st.ci_high <= 0.9 + 1e-12


def test_the_mean_is_computed_as_the_metrics_compute_it():
    assert cluster_stats(VALUES, GROUPS).mean == float(np.mean(VALUES))  # bit for bit


def test_bootstrap_is_deterministic_for_a_seed_and_depends_on_it():
    a = cluster_stats(VALUES, GROUPS, seed=0)
    assert a == cluster_stats(VALUES, GROUPS, seed=0)
    assert np.array_equal(bootstrap(VALUES, GROUPS, seed=3), bootstrap(VALUES, GROUPS, seed=3))
    # the replicates depend on the seed (the interval of this small table may still coincide)
    assert not np.array_equal(bootstrap(VALUES, GROUPS, seed=0), bootstrap(VALUES, GROUPS, seed=1))
    assert len(bootstrap(VALUES, GROUPS, n_boot=17)) == 17


def test_identical_groups_collapse_the_interval_to_the_mean():
    # every request has images 0.25 and 0.75: every resample has mean 0.5, and the SE is 0
    st = cluster_stats([0.25, 0.75] * 4, ["a", "a", "b", "b", "c", "c", "d", "d"])
    assert st.mean == 0.5 and st.stderr == pytest.approx(0.0, abs=1e-12)
    assert st.ci_low == pytest.approx(0.5, abs=1e-12) and st.ci_high == pytest.approx(0.5, abs=1e-12)


def test_one_group_has_no_stderr_or_interval():
    st = cluster_stats([0.1, 0.5, 0.9], ["r0"] * 3)
    assert st.mean == pytest.approx(0.5, abs=1e-12)
    assert (st.stderr, st.ci_low, st.ci_high, st.n_groups) == (None, None, None, 1)


def test_unequal_group_sizes_are_weighted_by_images():
    # A: 0, 0, 0 (3 images); B: 1 (1 image). Mean over images 1/4; mean of request means 1/2.
    v, g = [0.0, 0.0, 0.0, 1.0], ["A", "A", "A", "B"]
    # images: residuals 0 - 3/4 = -3/4 and 1 - 1/4 = 3/4; sum of squares 9/8; times 2/1: 9/4; sqrt 3/2; / 4 = 3/8
    st = cluster_stats(v, g, weighting="images")
    assert st.mean == 0.25 and st.stderr == pytest.approx(0.375, abs=1e-12)
    # a resample holds A and B in some mix: all A (0), all B (1) or both (1/4 image-weighted, 1/2 request-weighted)
    reps = set(np.round(bootstrap(v, g, weighting="images"), 12))
    assert reps <= {0.0, 0.25, 1.0} and 0.25 in reps
    # request means 0 and 1: sd sqrt(1/2), / sqrt(2) = 1/2
    st = cluster_stats(v, g, weighting="groups")
    assert st.mean == 0.5 and st.stderr == pytest.approx(0.5, abs=1e-12)
    assert set(np.round(bootstrap(v, g, weighting="groups"), 12)) <= {0.0, 0.5, 1.0}


def test_ungrouped_prompts_are_clusters_of_their_own():
    # four ungrouped images = per-image resampling: SE = sd(ddof=1) / sqrt(4) = sqrt(1/3) / 2
    v = [0.0, 1.0, 0.0, 1.0]
    st = cluster_stats(v, [""] * 4)
    assert st.n_groups == 4 and st.stderr == pytest.approx(math.sqrt(1 / 3) / 2, abs=1e-12)
    assert len(clusters(v, ["", "", "x", "x"])[0]) == 3  # two singletons and one request


def test_average_of_independent_means_adds_variances():
    se, lo, hi = combine_mean([(VALUES, GROUPS, "images"), ([0.25, 0.75] * 4, list("aabbccdd"), "images")])
    # SE = sqrt(0.03 + 0) / 2; mean (0.6 + 0.5) / 2 = 0.55 lies inside
    assert se == pytest.approx(math.sqrt(0.03) / 2, abs=1e-12)
    assert lo <= 0.55 <= hi
    assert combine_mean([(VALUES, GROUPS, "images"), ([0.3], ["x"], "images")]) == (None, None, None)


def test_bad_input():
    with pytest.raises(ValueError):
        cluster_stats([], [])
    with pytest.raises(ValueError):
        cluster_stats([1.0], ["a", "b"])
    with pytest.raises(ValueError):
        cluster_stats(VALUES, GROUPS, weighting="prompts")


def test_panel_rows_on_the_toy_world_carry_finite_stderr(tmp_path):
    """An ICEB panel run on the toy world: a subset resting on >= 2 requests has a finite SE and interval."""
    import json

    from iceb.harness import EvalConfig, evaluate
    from iceb.leaderboard.results import read_rows
    from iceb.models import TOY_DIR

    if not (TOY_DIR / "model_index.json").is_file():
        pytest.skip("toy world not shipped")
    # 2 edits, 6 prompts per subset: the edit subset holds both requests' 3 images, the holdout two classes
    cfg = EvalConfig(editor="uce", task="ace", model="toy", edits=(2,), out=str(tmp_path), device="cpu",
                     progress=False, limit=6, metrics=("iceb-cls",))
    rows = {(r["subset"], r["metric"]): r for r in read_rows(evaluate(cfg) / "results.jsonl")}
    for key in [("edit", "source2dest"), ("edit", "source2dest_top1"), ("edit", "pre_dest"),
                ("holdout", "holdout_delta"), ("holdout", "post_true_top5")]:
        r = rows[key]
        assert r["stderr"] is not None and math.isfinite(r["stderr"]) and r["stderr"] >= 0, (key, r)
        assert r["ci_low"] <= r["ci_high"], (key, r)
    # the first 6 general prompts all belong to the first request: one cluster, no SE, and so none for the
    # average score, which rests on the general subset too
    for key in [("general", "source2dest"), ("-", "average_score")]:
        assert (rows[key]["stderr"], rows[key]["ci_low"], rows[key]["ci_high"]) == (None, None, None), key
    r = rows[("edit", "source2dest")]
    assert r["ci_low"] - 1e-12 <= r["value"] <= r["ci_high"] + 1e-12
    json.dumps(rows[("edit", "source2dest")])  # the row stays JSON
