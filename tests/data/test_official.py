"""The official ICEB split reproduced from EMCID's released files (skipped without the reference copy)."""
from __future__ import annotations

import json

import pytest
from conftest import ICEB_REF as REF


@pytest.fixture()
def official_dir(monkeypatch):
    if not (REF / "imgnet_aug_edit.json").is_file():
        pytest.skip("EMCID reference data not present")
    monkeypatch.setenv("ICEB_OFFICIAL_DATA", str(REF))
    return REF


@pytest.fixture()
def bundle(official_dir):
    from iceb.data.official import official_bundle

    return official_bundle()


def test_counts(bundle, official_dir):
    from iceb.data.official import alias_request_count

    assert bundle.world == "imagenet"
    assert len(bundle.concepts) == 666
    assert len(bundle.edits) == 300 and len(bundle.holdout) == 366
    assert not {e.source_id for e in bundle.edits} & set(bundle.holdout)
    assert len({e.dest_id for e in bundle.edits}) == 171
    assert {e.dest_id for e in bundle.edits} <= set(bundle.holdout)
    assert [alias_request_count(bundle, n) for n in (1, 5, 10, 50, 100, 300)] == [5, 10, 12, 47, 83, 224]
    assert len(bundle.rectifications) == 143 and len({r.class_id for r in bundle.rectifications}) == 102
    assert bundle.rectification_max == 140 and bundle.holdout_prompts_per_class == 3
    assert bundle.templates == ("An image of {}", "A photo of {}", "{}")


def test_order_seeds_and_prompts_match_files(bundle, official_dir):
    edit = json.loads((official_dir / "imgnet_aug_edit.json").read_text())
    test = json.loads((official_dir / "imgnet_aug_test.json").read_text())
    order = list(dict.fromkeys(r["class id"] for r in edit))
    assert [e.source_id for e in bundle.edits] == order
    names = [bundle.concept(e.source_id).name for e in bundle.edits[:4]]
    dests = [bundle.concept(e.dest_id).name for e in bundle.edits[:4]]
    assert list(zip(names, dests)) == [("bighorn", "marmot"), ("hammerhead", "tiger shark"), ("hen", "suit"),
                                       ("junco", "basset")]
    assert bundle.edits[0].seed_train == 7316 and bundle.edits[0].template_seeds == (6843, 37720, 39243)
    assert all(isinstance(s, int) for c in bundle.concepts for s in [p.seed for p in c.prompts])
    # holdout prompts come back exactly as released (text and seed)
    from iceb.data.official import fill

    for r in test:
        c = bundle.concept(r["class id"])
        assert any(fill(p.template, c.name) == r["text prompt"] and p.seed == int(r["random seed"]) for p in c.prompts)
    assert list(dict.fromkeys(r["class id"] for r in test)) == list(bundle.holdout)


def test_bundle_roundtrip(bundle, tmp_path):
    from iceb.data.split_bundle import SplitBundle

    checksum = bundle.save(tmp_path / "b.json")
    again = SplitBundle.load(tmp_path / "b.json")
    assert again == bundle and again.checksum() == checksum


def test_csv_quirks(tmp_path):
    from iceb.data.official import OfficialDataError, read_request_csv

    p = tmp_path / "r.csv"
    p.write_text('source,dest,prompts,seed_train,seeds,source id,dest id\n'
                 'a,b,"[\'An image of {}\', \'{}\']",7,"[1, \'2\']",3,4\n'
                 'c,d,"[\'{}\']",8,[],5,5\n')
    rows = read_request_csv(p)
    assert rows[0].seeds == (1, 2) and rows[0].prompts == ("An image of {}", "{}") and rows[0].seed_train == 7
    assert rows[1].seeds == () and rows[1].source_id == 5
    p.write_text('source,dest,prompts,seed_train,seeds,source id,dest id\na,b,[oops,7,[],3,4\n')
    with pytest.raises(OfficialDataError, match="r.csv row 2"):
        read_request_csv(p)


def test_download_failure_is_clear(tmp_path, monkeypatch):
    """No network in tests: the URL opener is replaced by one that fails."""
    import urllib.request

    from iceb.data.official import official_file, official_url
    from iceb.utils.download import DownloadError

    monkeypatch.delenv("ICEB_OFFICIAL_DATA", raising=False)
    monkeypatch.setenv("ICEB_CACHE", str(tmp_path))

    def fail(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", fail)
    with pytest.raises(DownloadError) as err:
        official_file("imgnet_aug_edit.json")
    assert official_url("imgnet_aug_edit.json") in str(err.value) and "ICEB_OFFICIAL_DATA" in str(err.value)
    assert "10a392afb502cc2ed6a781c7c56dc179defaf064" in official_url("x")
    with pytest.raises(FileNotFoundError, match="ICEB_OFFICIAL_DATA|data_dir"):
        official_file("imgnet_aug_edit.json", data_dir=tmp_path)


def test_derive_reproduces_official_rectifications(official_dir, bundle):
    from iceb.data.misunderstood_names import derive_rectifications
    from iceb.data.official import load_class_scores

    reqs = derive_rectifications(load_class_scores(), [c.id for c in bundle.concepts])
    assert len(reqs) == 143 and len({r.class_id for r in reqs}) == 102
    expected = [(r.class_id, r.source, r.destination) for r in bundle.rectifications]
    assert [(r.class_id, r.source, r.destination) for r in reqs] == expected
    assert ("panda", "red panda") not in {(r.source, r.destination) for r in reqs}
