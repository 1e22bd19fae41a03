from __future__ import annotations

from pathlib import Path

import pytest

VIT = Path("/work/shared/reference/emcid/data/iceb_data/vit_classifier_config.json")


def test_timm_concepts():
    from iceb.data.imagenet import duplicate_primary_names, imagenet_concepts

    cs = imagenet_concepts()
    assert len(cs) == 1000 and [c.id for c in cs] == list(range(1000))
    assert cs[0].wnid == "n01440764" and cs[0].names == ("tench", "Tinca tinca") and "fish" in cs[0].gloss
    assert sum(len(c.names) > 1 for c in cs) == 492
    assert sum(len(c.names) for c in cs) == 1860
    assert duplicate_primary_names() == {"crane": [134, 517], "maillot": [638, 639]}
    assert all(n == n.strip() and n for c in cs for n in c.names)


def test_against_vit_id2label():
    if not VIT.is_file():
        pytest.skip("reference vit_classifier_config.json not present")
    from iceb.data.imagenet import compare_with_vit_labels, load_vit_id2label

    res = compare_with_vit_labels(load_vit_id2label(VIT))
    assert res.identical_after_strip == 1000 and res.differences == []
    assert res.multi_name_classes == 492
    assert res.leading_space_synonyms == 1860 - 1000  # every synonym after the first
    assert res.duplicate_primary_names == {"crane": [134, 517], "maillot": [638, 639]}


def test_comparison_reports_differences():
    from iceb.data.imagenet import compare_with_vit_labels, imagenet_concepts

    labels = {c.id: ", ".join(c.names) for c in imagenet_concepts()}
    labels[5] = "not a ray"
    res = compare_with_vit_labels(labels)
    assert res.identical_after_strip == 999 and res.differences[0]["id"] == 5
