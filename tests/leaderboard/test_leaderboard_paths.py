"""A run folder received from someone else names its tasks, models and metrics: those names become file names
of the leaderboard and must never reach outside ``--out`` (absolute paths, ``..``, separators)."""
from __future__ import annotations

from pathlib import Path

import pytest

from iceb.leaderboard.results import append_block
from iceb.leaderboard.schema import ResultRow
from iceb.leaderboard.tables import build_leaderboard
from iceb.utils.paths import inside, safe_filename


def _run(folder: Path, task: str, model: str = "toy", metric: str = "source_forget") -> Path:
    folder.mkdir(parents=True)
    rows = [ResultRow(editor="uce", model=model, task=task, world="toy", n_edits=n, mode="batch", subset="edit",
                      metric=metric, value=0.5, bound=None, n=3, higher_is_better=True, smoke=False,
                      run_id="uce-x-0123456789abcdef", run_hash="0123456789abcdef", iceb_version="0").to_dict()
            for n in (1, 2)]
    append_block(folder / "results.jsonl", rows, {"key": "n1", "block": "b1", "n_edits": 1})
    return folder


@pytest.mark.parametrize("hostile", ["{tmp}/victim/x", "../../victim/x", "../victim", "..", "/", "a/b\\c"])
def test_names_from_rows_stay_inside_out(tmp_path, hostile):
    hostile = hostile.format(tmp=tmp_path)
    run = _run(tmp_path / "runs" / "r1", task=hostile, model=hostile, metric=hostile)
    out = tmp_path / "deep" / "lb"
    written = build_leaderboard([run], out)
    assert written
    for path in written:
        assert out.resolve() in Path(path).resolve().parents, path
    # nothing appeared anywhere but under out (and the run folder we made)
    made = {p for p in tmp_path.rglob("*") if p.is_file()}
    assert all(out in p.parents or run in p.parents for p in made), sorted(map(str, made))
    assert not (tmp_path / "victim").exists()


def test_safe_filename_and_inside():
    assert safe_filename("/abs/path/x") == "abs_path_x"
    assert safe_filename("../../x") == "x"
    assert safe_filename("..") == "x" and safe_filename("") == "x"
    assert safe_filename("ace-1k.v2") == "ace-1k.v2"
    long_a, long_b = "t" * 300 + "a", "t" * 300 + "b"
    assert len(safe_filename(long_a)) <= 64 and safe_filename(long_a) != safe_filename(long_b)
    with pytest.raises(ValueError, match="outside"):
        inside("/tmp/a", "/tmp/a/../b.csv")
    assert inside("/tmp/a", "/tmp/a/b/c.csv") == Path("/tmp/a/b/c.csv")


def test_a_bad_row_writes_nothing(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.jsonl").write_text('{"kind": "result", "block": "b", "task": 3}\n'
                                       '{"kind": "done", "block": "b", "key": "n1"}\n')
    out = tmp_path / "lb"
    with pytest.raises(ValueError, match=r"results.jsonl:1"):
        build_leaderboard([run], out)
    assert not out.exists()
