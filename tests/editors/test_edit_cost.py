"""An edit's cost split into phases, each labelled with the cache state it ran in (editors.run.edit_cost), and
the harness's cost rows: a warm figure must never read as the method's cost."""
from __future__ import annotations

import dataclasses
import sys

import pytest
import torch

from editors.base import BaseEditor, EditRequest, EditResult
from editors.hparams import Hparams
from editors.run import edit_cost, make_editor, run_editor
from editors.weights import get_tensor
from iceb.harness.run import cost_rows
from iceb.utils.cache import ContentCache, cache_tally
from iceb.utils.memory import peak_memory

TO_V = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v.weight"


@dataclasses.dataclass(frozen=True)
class _Hp(Hparams):
    grab_mb: int = 0


class _Cached(BaseEditor):
    """A statistics cache (precompute) and one cache entry per concept (per_concept); fixed timings."""

    name = "test-cost-cached"
    hparams_class = _Hp
    supports = frozenset({"update"})
    cost_phases = {"stats": "precompute", "concepts": "per_concept", "solve": "solve"}
    cache_phases = {"test-cost-stats": "precompute", "test-cost-concept": "per_concept"}

    def edit(self, pipe, requests):
        stats = ContentCache(self.cache_dir / "s", "test-cost-stats")
        concept = ContentCache(self.cache_dir / "c", "test-cost-concept")
        if stats.get("stats0") is None:
            stats.put("stats0", {"x": torch.ones(2)})
        for r in requests:
            if concept.get(f"c-{r.source}") is None:
                concept.put(f"c-{r.source}", {"x": torch.ones(2)})
        ballast = bytearray(self.hparams.grab_mb * 2**20)  # touched: resident
        ballast[::4096] = b"\x01" * len(ballast[::4096])
        w = get_tensor(pipe, TO_V).detach().clone() * 1.01
        return EditResult({TO_V: w}, timings={"stats": 1.0, "concepts": 2.0, "solve": 3.0, "inner": 0.5})


def test_phases_follow_the_cache_cold_warm_mixed(tiny_pipe, tmp_path):
    ed = make_editor(_Cached, _Hp(), cache_dir=tmp_path, progress=False)
    cold = run_editor(ed, tiny_pipe, [EditRequest("cat", "dog")]).info["cost"]
    assert cold["seconds"]["precompute"] == 1.0 and cold["seconds"]["per_concept"] == 2.0
    assert cold["seconds"]["solve"] == 3.0 and "inner" not in cold["seconds"]  # a detail, not a phase
    assert cold["state"] == {"precompute": "cold", "per_concept": "cold", "solve": "cold", "edit": "cold"}
    assert cold["cache"] == {"test-cost-stats": [0, 1], "test-cost-concept": [0, 1]}

    warm = run_editor(ed, tiny_pipe, [EditRequest("cat", "dog")]).info["cost"]
    assert warm["state"] == {"precompute": "warm", "per_concept": "warm", "solve": "cold", "edit": "warm"}

    mixed = run_editor(ed, tiny_pipe, [EditRequest("cat", "dog"), EditRequest("car", "bus")]).info["cost"]
    assert mixed["state"]["precompute"] == "warm" and mixed["state"]["per_concept"] == "mixed"
    assert mixed["state"]["edit"] == "mixed" and mixed["cache"]["test-cost-concept"] == [1, 1]


def test_an_unmapped_cache_and_untimed_editor_count_as_cold():
    class Plain:
        pass

    cost = edit_cost(Plain(), {"edit_seconds": 2.5, "whatever": 1.0}, {"someone-else": (3, 0)}, {})
    assert cost["seconds"] == {"edit": 2.5, "other": 2.5} and cost["state"] == {"edit": "cold"}


def test_the_tally_counts_every_cache_of_the_process(tmp_path):
    before = cache_tally().get("test-tally", (0, 0))
    c = ContentCache(tmp_path, "test-tally")
    c.get("abcd")
    c.put("abcd", {"x": torch.zeros(1)})
    c.get("abcd")
    ContentCache(None, "test-tally").get("abcd")  # a disabled cache misses
    assert cache_tally()["test-tally"] == (before[0] + 1, before[1] + 2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the block-scoped peak needs /proc/self/clear_refs")
def test_peak_memory_is_the_blocks_own_not_the_process_lifetime(tiny_pipe, tmp_path):
    big = bytearray(400 * 2**20)
    big[::4096] = b"\x01" * len(big[::4096])
    del big  # the process's lifetime peak now includes these 400 MiB
    with peak_memory() as m:
        pass
    ed = make_editor(_Cached, _Hp(grab_mb=200), cache_dir=tmp_path, progress=False)
    cost = run_editor(ed, tiny_pipe, [EditRequest("cat", "dog")]).info["cost"]
    assert m["rss_scope"] == cost["rss_scope"] == "block"
    assert cost["peak_rss_mb"] >= m["peak_rss_mb"] + 150  # the 200 MiB the edit touched (allocator slack aside)
    assert m["peak_rss_mb"] < cost["peak_rss_mb"] < m["peak_rss_mb"] + 400  # not the earlier 400 MiB


def _cost(state: str, edit: float) -> dict:
    return {"seconds": {"precompute": 1.0, "per_concept": 2.0, "solve": 0.5, "edit": edit, "other": 0.1},
            "state": {"edit": state}, "cache": {}, "peak_rss_mb": 100.0, "rss_scope": "block"}


def test_cost_rows_by_hand():
    rows = cost_rows({"edit_seconds": 3.6, "info": {"cost": _cost("cold", 3.6), "cost_warm": _cost("warm", 0.7)}},
                     4, 3 * 2**20)
    got = {(r["subset"], r["metric"]): r["value"] for r in rows}
    assert got == {("cost:cold", "precompute_seconds"): 1.0, ("cost:cold", "per_concept_seconds"): 2.0,
                   ("cost:cold", "solve_seconds"): 0.5, ("cost:cold", "edit_seconds"): 3.6,
                   ("cost:cold", "peak_rss_mb"): 100.0,
                   ("cost:warm", "precompute_seconds"): 1.0, ("cost:warm", "per_concept_seconds"): 2.0,
                   ("cost:warm", "solve_seconds"): 0.5, ("cost:warm", "edit_seconds"): 0.7,
                   ("cost:warm", "peak_rss_mb"): 100.0, ("cost", "edit_file_mb"): 3.0}
    assert all(r["n"] == 4 and r["higher_is_better"] is False and r["bound"] is None for r in rows)
    # a sidecar from before the split: its one figure, of unknown cache state
    assert [(r["subset"], r["metric"]) for r in cost_rows({"edit_seconds": 2.0}, 1, 10)][0] == \
        ("cost:unknown", "edit_seconds")
