"""``iceb cache ls`` and ``iceb cache clear``: kinds, entries and sizes of the shared root, and removing one kind
or everything (only with --yes)."""
from __future__ import annotations

import os
from pathlib import Path

from iceb.cli import main
from iceb.utils.cache import ContentCache
from iceb.utils.cache_usage import cache_usage


def _fill(root: Path) -> None:
    import torch

    ContentCache(root / "editors" / "stats", "stats").put("abc123", {"m": torch.zeros(4, 4)})
    ContentCache(root / "editors" / "stats", "stats").put("def456", {"m": torch.zeros(2)})
    ContentCache(root / "editors" / "emcid" / "stage1", "emcid-stage1").put("aa0001", {"d": torch.ones(3)})
    (root / "downloads" / "x").mkdir(parents=True)
    (root / "downloads" / "x" / "f.txt").write_text("12345")


def test_ls_lists_kinds_entries_and_sizes(capsys):
    root = Path(os.environ["ICEB_CACHE"])
    _fill(root)
    usage = {u.kind: u for u in cache_usage(root)}
    assert set(usage) == {"editors/stats", "editors/emcid/stage1", "downloads"}
    assert usage["editors/stats"].entries == 2 and usage["downloads"].bytes == 5
    assert main(["cache", "ls"]) == 0
    out = capsys.readouterr().out
    assert str(root) in out
    line = next(ln for ln in out.splitlines() if ln.startswith("editors/stats "))
    assert line.split()[1] == "2"


def test_clear_one_kind_then_everything(capsys):
    root = Path(os.environ["ICEB_CACHE"])
    _fill(root)
    assert main(["cache", "clear", "--kind", "editors/stats", "--yes"]) == 0
    assert {u.kind for u in cache_usage(root)} == {"editors/emcid/stage1", "downloads"}
    assert "removed 2 file(s)" in capsys.readouterr().out
    assert main(["cache", "clear", "--kind", "editors", "--yes"]) == 0  # a folder above kinds
    assert {u.kind for u in cache_usage(root)} == {"downloads"}
    assert main(["cache", "clear", "--yes"]) == 0
    assert cache_usage(root) == [] and root.is_dir()
    assert main(["cache", "ls"]) == 0 and "(empty)" in capsys.readouterr().out
