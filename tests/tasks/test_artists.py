"""The artists task: the official counts and files (against ../shared/reference), the request seeds, bad input,
and one run on `tiny` through the real LPIPS and CLIP-score code."""
from __future__ import annotations

import json

import pytest

from iceb.data.artists import (
    ARTIST_COUNTS,
    ARTIST_TEMPLATES,
    ArtistDataError,
    load_artist_prompts,
    load_artists,
    seed_train,
)
from iceb.tasks import TaskError, get_task
from tests.conftest import SHARED_REF

EMCID_DATA = SHARED_REF / "emcid" / "data"
pytestmark = pytest.mark.skipif(not (EMCID_DATA / "artists").is_dir(), reason="../shared/reference is not here")


@pytest.fixture(autouse=True)
def _emcid_data(monkeypatch):
    monkeypatch.setenv("ICEB_EMCID_DATA", str(EMCID_DATA))


@pytest.mark.parametrize("n", ARTIST_COUNTS)
def test_official_counts(n):
    names = load_artists(n)
    assert len(names) == len(set(names)) == n
    rows = load_artist_prompts(n)
    by_type = {t: [r for r in rows if r.type == t] for t in ("erased", "holdout", "preserved")}
    # 5 prompts per erased artist, capped at 100 artists; 100 holdout and 100 preserved artists x 5
    assert len(by_type["erased"]) == 5 * min(n, 100)
    assert len(by_type["holdout"]) == len(by_type["preserved"]) == 500
    assert len({r.artist for r in by_type["holdout"]}) == 100
    inst = get_task("artists", world="imagenet").build(n)
    c = inst.counts()
    assert (c["requests"], c["general"], c["holdout"], c["edit"], c["alias"]) == (n, 5 * min(n, 100), 500, 0, 0)
    assert {r.source for r in inst.requests} == set(names)
    assert not {p.true_class for p in inst.subset("holdout")} & set(names)
    assert inst.info["preserved_rows_skipped"] == 500


def test_requests_follow_the_official_dataset():
    import torch

    inst = get_task("artists", world="imagenet").build(10)
    names = json.loads((EMCID_DATA / "artists" / "info" /
                        "erased-10artists-towards_art-preserve_true-sd_1_4-method_replace.txt").read_text())
    torch.random.manual_seed(2023)  # ArtistRequestsDataset.__init__, then one randint per artist
    seeds = [torch.randint(0, 100000, (1,)).item() for _ in names]
    assert [(r.source, r.destination, r.templates, r.seed, r.kind) for r in inst.requests] == [
        (a, "art", ARTIST_TEMPLATES, s, "update") for a, s in zip(names, seeds)]
    assert seed_train(3) == seeds[:3]
    # every erased prompt belongs to its artist's request and names the artist
    rid = {r.source: r.request_id for r in inst.requests}
    for p in inst.subset("general"):
        assert p.group == rid[p.true_class] and p.true_class in p.prompt
    erase = get_task("artists", world="imagenet", destination="").build(1)
    assert erase.requests[0].kind == "erase" and erase.requests[0].destination == ""


def test_bad_input(tmp_path):
    task = get_task("artists", world="imagenet")
    with pytest.raises(TaskError, match="serves 1, 5, 10, 50, 100, 500, 1000, 1500 edits only; got 7"):
        task.build(7)
    with pytest.raises(TaskError, match="supports 1 to 1500"):
        task.build(2000)
    with pytest.raises(TaskError, match="toy world has no artists"):
        get_task("artists", world="toy")
    stem = "erased-1artists-towards_art-preserve_true-sd_1_4-method_replace"
    (tmp_path / "info").mkdir()
    (tmp_path / "prompts_dir").mkdir()
    (tmp_path / "info" / f"{stem}.txt").write_text('["A. Painter"]')
    csv = tmp_path / "prompts_dir" / f"{stem}.csv"
    csv.write_text("case_number,prompt,artist,type\n0,art by A. Painter,A. Painter,erased\n")
    with pytest.raises(ArtistDataError, match=r"missing column\(s\) \['evaluation_seed'\]"):
        load_artist_prompts(1, tmp_path)
    csv.write_text("case_number,prompt,evaluation_seed,artist,type\n0,a landscape,5,A. Painter,erased\n")
    with pytest.raises(ArtistDataError, match="line 2: prompt 'a landscape' does not name its artist"):
        load_artist_prompts(1, tmp_path)
    (tmp_path / "info" / f"{stem}.txt").write_text('["A. Painter", "B"]')
    with pytest.raises(ArtistDataError, match="expected 1 distinct artists, found 2"):
        load_artists(1, tmp_path)


def test_artists_run_on_tiny(tmp_path, tiny_model, tiny_clip_env, random_alexnet_file, monkeypatch):
    """The task end to end with UCE: LPIPS and CLIP score through their real loaders (random weights)."""
    from iceb.harness.run import EvalConfig, evaluate
    from iceb.leaderboard.results import read_rows

    monkeypatch.setenv("ICEB_LPIPS_ALEXNET", random_alexnet_file)
    cfg = EvalConfig(editor="uce", task="artists", model="tiny", edits=(1, 5), out=str(tmp_path), device="cpu",
                     progress=False, batch_size=4, limit=3, metrics=("lpips", "clip-score"))
    rows = read_rows(evaluate(cfg, model=tiny_model) / "results.jsonl")
    got = {(r["n_edits"], r["subset"], r["metric"]): r for r in rows}
    for n in (1, 5):
        for subset in ("general", "holdout"):
            lp = got[n, subset, "lpips"]
            assert lp["n"] == 3 and lp["value"] >= 0
            assert lp["higher_is_better"] is (subset == "general")
            cs = got[n, subset, "clip_score_delta"]
            assert cs["n"] == 3 and cs["higher_is_better"] is (subset == "holdout")
    # UCE rewrote the cross-attention keys and values of the erased names: their images change
    assert got[1, "general", "lpips"]["value"] > 0
