"""The one content-addressed cache: layout, counters, codecs, and recovery from torn entries and dead writers."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from iceb.utils.cache import PNG, ContentCache

KEY = "ab12cd34ef56ab78"


def test_layout_roundtrip_counters_and_metadata(tmp_path):
    c = ContentCache(tmp_path, "demo")
    assert c.get(KEY) is None and (c.hits, c.misses) == (0, 1)
    path = c.put(KEY, {"x": torch.arange(6.0).reshape(2, 3)}, {"source": "cat", "n": 3})
    assert path == tmp_path / "ab" / f"{KEY}.safetensors" == c.path(KEY) and KEY in c and c.keys() == [KEY]
    value, meta = c.entry(KEY)
    assert torch.equal(value["x"], torch.arange(6.0).reshape(2, 3)) and meta == {"source": "cat", "n": "3"}
    assert (c.hits, c.misses, c.puts) == (1, 1, 1)
    with pytest.raises(ValueError):
        c.path("../escape")


def test_disabled_cache_misses_and_stores_nothing():
    c = ContentCache(None, "demo")
    assert not c.enabled and c.put(KEY, {"x": torch.ones(1)}) is None and c.get(KEY) is None and KEY not in c


def test_an_entry_of_another_kind_is_a_miss(tmp_path):
    ContentCache(tmp_path, "one").put(KEY, {"x": torch.ones(1)})
    with pytest.warns(UserWarning, match="another entry"):
        assert ContentCache(tmp_path, "two").get(KEY) is None


@pytest.mark.parametrize("cut", [0, 7, -5])
def test_a_truncated_tensor_entry_is_a_warned_miss_then_recomputed_and_replaced(tmp_path, cut):
    c = ContentCache(tmp_path, "demo")
    p = c.put(KEY, {"x": torch.randn(64)})
    data = p.read_bytes()
    p.write_bytes(data[:cut] if cut >= 0 else data[:len(data) + cut])
    with pytest.warns(UserWarning, match=f"demo cache: ignoring {p}"):
        assert c.get(KEY) is None
    assert c.corrupt == 1 and c.misses == 1 and not p.exists()
    fresh = {"x": torch.full((64,), 2.0)}
    c.put(KEY, fresh)
    assert torch.equal(c.get(KEY)["x"], fresh["x"])


def test_png_codec_and_a_truncated_image(tmp_path):
    c = ContentCache(tmp_path, "images", PNG)
    im = (np.arange(8 * 8 * 3) % 256).astype(np.uint8).reshape(8, 8, 3)
    p = c.put(KEY, im)
    assert p.suffix == ".png" and np.array_equal(c.get(KEY), im)
    p.write_bytes(p.read_bytes()[:40])
    with pytest.warns(UserWarning, match="images cache: ignoring"):
        assert c.get(KEY) is None
    assert not p.exists()


def test_stale_temporary_files_of_killed_writers_are_removed_on_open(tmp_path):
    shard = tmp_path / "ab"
    shard.mkdir()
    old, new = shard / f".{KEY}.safetensors.x1.tmp", shard / f".{KEY}.safetensors.x2.tmp"
    old.write_bytes(b"half")
    new.write_bytes(b"busy")  # a writer that is still running
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    ContentCache(tmp_path, "demo")
    assert not old.exists() and new.exists()


def test_a_truncated_editor_cache_file_no_longer_blocks_the_edit(tiny_pipe, tmp_path):
    """Stage I and the statistics of EMCID: a torn entry is warned about, recomputed, replaced; the edit equals
    the one from a clean cache."""
    from editors.emcid import EMCIDEditor, EMCIDHparams
    from editors.requests import EditRequest

    base = EMCIDEditor.load_hparams("tiny").to_dict()
    hp = EMCIDHparams.from_dict({**base, "layers": [2, 4], "v_num_grad_steps": 2, "train_size": 16,
                                 "train_steps": 1, "mom2_n_samples": 60})
    reqs = [EditRequest("cat", "dog", seed=11)]
    first = EMCIDEditor(hp, cache_dir=tmp_path, progress=False).edit(tiny_pipe, reqs)
    torn = [p for sub in ("emcid/stage1", "stats") for p in sorted((tmp_path / sub).rglob("*.safetensors"))]
    assert len(torn) == 3
    for p in torn:
        p.write_bytes(p.read_bytes()[:100])
    ed = EMCIDEditor(hp, cache_dir=tmp_path, progress=False)
    with pytest.warns(UserWarning, match="cache: ignoring"):
        again = ed.edit(tiny_pipe, reqs)
    assert again.info["stage1_cache_hits"] == 0 and ed.stats_cache.corrupt == 2 and ed.stage1_cache.corrupt == 1
    assert all(p.is_file() and p.stat().st_size > 100 for p in torn)  # replaced
    for k, v in first.tensors.items():
        assert torch.equal(v, again.tensors[k]), k
    third = EMCIDEditor(hp, cache_dir=tmp_path, progress=False).edit(tiny_pipe, reqs)
    assert third.info["stage1_cache_hits"] == 1
