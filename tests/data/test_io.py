"""Atomic writes: the written file has the permissions a plain write would give it."""
from __future__ import annotations

import os

from iceb.utils.io import _UMASK, write_text


def test_atomic_writes_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    p = tmp_path / "a.json"
    write_text(p, "{}")
    assert p.read_text() == "{}"
    assert p.stat().st_mode & 0o777 == 0o666 & ~_UMASK


def test_atomic_rewrite_keeps_an_existing_files_mode(tmp_path):
    p = tmp_path / "b.txt"
    p.write_text("old")
    os.chmod(p, 0o640)
    write_text(p, "new")
    assert p.read_text() == "new" and p.stat().st_mode & 0o777 == 0o640


def test_safetensors_written_through_atomic_path_get_the_umask_mode(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from iceb.utils.io import atomic_path

    p = tmp_path / "w.safetensors"
    with atomic_path(p) as tmp:
        save_file({"x": torch.arange(3.0)}, str(tmp))
    assert torch.equal(load_file(p)["x"], torch.arange(3.0))
    assert p.stat().st_mode & 0o777 == 0o666 & ~_UMASK
