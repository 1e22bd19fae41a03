"""Caption corpora by dependency inversion: editors read caption files and a registry the benchmark fills."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from editors.corpora import CORPORA, UnknownCorpusError, load_corpus, read_caption_file, register_corpus

REPO = Path(__file__).resolve().parents[2]


def test_named_corpora_and_files(tmp_path):
    assert {"coco", "ccs", "toy", "mini"} <= set(CORPORA.names())
    assert len(load_corpus("mini")) > 100 and len(load_corpus("toy")) > 100
    f = tmp_path / "c.txt"
    f.write_text("a cat\n\na dog\n")
    assert load_corpus(str(f)) == read_caption_file(f) == ["a cat", "a dog"]
    with pytest.raises(FileNotFoundError):
        load_corpus(str(tmp_path / "missing.txt"))


def test_unknown_name_says_did_you_mean():
    with pytest.raises(UnknownCorpusError, match="Did you mean 'mini'") as err:
        load_corpus("mimi")
    assert isinstance(err.value, ValueError)


def test_a_plug_in_corpus_registers_by_name():
    register_corpus("test-plugin-corpus", lambda: ["one", "two"])
    assert load_corpus("test-plugin-corpus") == ["one", "two"]


def test_the_source_trees_entry_points_count_without_a_reinstall():
    from iceb.utils.registry import source_tree_entry_points

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["iceb.corpora"]
    assert source_tree_entry_points("iceb.corpora") == declared
    assert source_tree_entry_points("no.such.group") == {}


def test_entry_points_of_pyproject_resolve_in_a_plain_process(tmp_path):
    """What ``pip install -e .`` writes (the ``iceb.corpora`` entry points of pyproject.toml) is enough for a
    plain process that imports only ``editors.corpora``: the entry point imports ``iceb.data.corpora`` from
    whichever tree is on sys.path."""
    eps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["iceb.corpora"]
    assert set(eps) == {"coco", "ccs", "toy", "toy-1k", "mini"}
    dist = tmp_path / "iceb_corpora_probe-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: iceb-corpora-probe\nVersion: 0\n")
    (dist / "entry_points.txt").write_text("[iceb.corpora]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()))
    code = ("import sys; from editors.corpora import load_corpus; assert 'iceb.data.corpora' not in sys.modules; "
            "print(len(load_corpus('toy'))); assert 'iceb.data.corpora' in sys.modules")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) == len(load_corpus("toy"))
