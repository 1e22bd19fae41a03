"""Generated free-form prompts and the shipped 1000-class split."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from iceb.data.imagenet import IMAGENET_DATA_DIR

REF = Path("/work/shared/reference/emcid/data/iceb_data")


@pytest.fixture(scope="module")
def split1k():
    from iceb.data.split_bundle import SplitBundle

    return SplitBundle.load(IMAGENET_DATA_DIR / "split1k.json")


def test_every_prompt_passes_the_checks(split1k):
    from iceb.data.prompts import check_prompt
    from iceb.data.tokenizer import load_clip_tokenizer

    tok = load_clip_tokenizer()
    texts = []
    for c in split1k.concepts:
        assert len(c.prompts) >= 5
        assert len({p.seed for p in c.prompts}) == len(c.prompts)
        for p in c.prompts:
            assert p.template.count("{}") == 1
            text = p.template.replace("{}", c.name)
            assert check_prompt(text, c.name) is None, (c.id, text)
            texts.append(text)
    assert len(texts) == len({t.lower() for t in texts})
    lengths = [len(ids) for ids in tok(texts).input_ids]
    assert max(lengths) <= 77


def test_checks_catch_failures():
    from iceb.data.prompts import check_prompt

    assert check_prompt("A tench near a goldfish.", "tench") == "names another class: 'goldfish'"
    assert check_prompt("A tench and a tench.", "tench") == "class name does not appear exactly once"
    assert check_prompt("A tiger shark in the sea.", "tiger shark") is None  # own name contains "tiger"
    from iceb.data.tokenizer import load_clip_tokenizer

    assert check_prompt("A tench " + "very " * 80, "tench", load_clip_tokenizer()) == "longer than 77 CLIP tokens"


def test_official_format_roundtrip(tmp_path, split1k):
    from iceb.data.prompts import load_prompt_file, write_prompt_file

    ps = {c.id: c.prompts for c in split1k.concepts[:20]}
    write_prompt_file(tmp_path / "p.json", ps, {c.id: c.name for c in split1k.concepts})
    assert load_prompt_file(tmp_path / "p.json") == ps


def test_official_prompt_file_loads():
    if not (REF / "imgnet_prompts.json").is_file():
        pytest.skip("EMCID reference data not present")
    from iceb.data.prompts import load_prompt_file

    ps = load_prompt_file(REF / "imgnet_prompts.json")
    assert len(ps) == 1000 and Counter(len(v) for v in ps.values()) == {5: 1000}
    assert ps[0][0].template == "A {} swimming gracefully in a clear blue pond." and ps[0][0].seed == 98167


def test_split1k_design(split1k):
    from iceb.data.imagenet import imagenet_concepts

    assert split1k.version == json.loads((IMAGENET_DATA_DIR / "MANIFEST.json").read_text())["version"]
    assert len(split1k.concepts) == 1000 and len(split1k.edits) == 1000 and len(split1k.holdout) == 250
    hold = set(split1k.holdout)
    assert {134, 517, 638, 639} <= hold
    assert not {e.source_id for e in split1k.edits} & hold
    assert {e.dest_id for e in split1k.edits} <= hold - {134, 517, 638, 639}
    class_edits = [e for e in split1k.edits if e.source_name is None]
    assert len(class_edits) == 750 and len({e.source_id for e in class_edits}) == 750
    assert all(e.source_name is None for e in split1k.edits[:750])
    names = {(e.source_id, e.source_name or split1k.concept(e.source_id).name) for e in split1k.edits}
    assert len(names) == 1000  # every request edits a different name
    dest = {e.source_id: e.dest_id for e in class_edits}
    assert all(dest[e.source_id] == e.dest_id for e in split1k.edits[750:])
    cs = imagenet_concepts()
    assert all(split1k.concept(i).name == cs[i].name for i in range(1000))


def test_ace1k_task_counts(split1k):
    from iceb.tasks.ace import ACE1kTask

    task = ACE1kTask(bundle=split1k)
    assert task.max_edits == 1000
    for n in (1, 10, 100, 300, 1000):
        inst = task.build(n)
        assert inst.counts()["requests"] == n and inst.counts()["holdout"] == 750
        assert not {p.true_class for p in inst.subset("holdout")} & {r.source_id for r in inst.requests}
    full = task.build(1000)
    alias_names = {p.group.split("alias:")[1] for p in full.subset("alias")}
    assert not alias_names & {r.source for r in full.requests}


def test_split1k_rebuilds_identically():
    """scripts/build_splits.py is deterministic: rebuilding gives the shipped checksum."""
    from iceb.data.split_1k import build_split1k

    manifest = json.loads((IMAGENET_DATA_DIR / "MANIFEST.json").read_text())
    assert build_split1k().checksum() == manifest["split_checksum"]
