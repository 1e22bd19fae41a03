"""The files of a run folder besides the rows: edit files, before/after grids, and the cleaning of stale files.

Layout of ``<out>/<run_id>/``: ``manifest.json``, ``config.json``, ``results.jsonl`` (+ ``results.csv``),
``edits/n<N>.safetensors`` (+ JSON sidecar), ``grids/n<N>.png``, ``samples/n<N>/`` (``--log-samples``: :mod:`iceb.harness.samples`),
``attacks/n<N>/`` (``--attacks``: :mod:`iceb.harness.attacks`), and ``work/n<N>/``
while N is in flight.
Every write is atomic (:mod:`iceb.utils.io`).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence


def clear_run(run_dir: Path) -> None:
    """--overwrite: drop this run's results, plan, edits and work (the shared caches stay)."""
    for name in ("results.jsonl", "results.csv", "manifest.json", "config.json"):
        (run_dir / name).unlink(missing_ok=True)
    for name in ("edits", "work", "grids", "samples", "attacks"):
        shutil.rmtree(run_dir / name, ignore_errors=True)


def clean_stale(run_dir: Path, done: set[str]) -> None:
    """Temp files of killed writers, and the work folders of edit counts already aggregated."""
    for tmp in run_dir.rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    for key in done:
        shutil.rmtree(run_dir / "work" / key, ignore_errors=True)


def drop_empty_work(run_dir: Path) -> None:
    """The ``work`` folder once every edit count is aggregated."""
    work = run_dir / "work"
    if work.is_dir() and not any(work.iterdir()):
        work.rmdir()


def save_png(path: Path, image) -> None:
    from PIL import Image

    from iceb.utils.io import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def save_grid(path: Path, pre: Sequence[Any], post_paths: Sequence[Path]) -> None:
    """Rows of (before, after) pairs, as small PNG: one row per edited concept (then holdouts)."""
    import numpy as np
    from PIL import Image

    from iceb.utils.io import atomic_path

    pairs = []
    for a, p in zip(pre, post_paths):
        if a is None or not p.is_file():
            continue
        with Image.open(p) as im:
            b = np.asarray(im.convert("RGB"))
        pairs.append((a, b))
    if not pairs:
        return
    size = 128
    tiles = [Image.fromarray(x).resize((size, size), Image.NEAREST if x.shape[0] < size else Image.BICUBIC)
             for pair in pairs for x in pair]
    grid = Image.new("RGB", (2 * size, len(pairs) * size))
    for k, t in enumerate(tiles):
        grid.paste(t, ((k % 2) * size, (k // 2) * size))
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")


def delta_ok(stem: Path, inst) -> bool:
    """A saved edit for exactly this task instance exists (its sidecar is written last)."""
    from iceb.editfile import sidecar_path

    path = stem.with_suffix(".safetensors")
    side = sidecar_path(path)
    if not (side.is_file() and path.is_file()):
        return False
    try:
        return json.loads(side.read_text()).get("task_fingerprint") == inst.fingerprint()
    except json.JSONDecodeError:
        return False


def save_delta(stem: Path, result, inst, mode, common: Mapping[str, Any]) -> None:
    """The edit as a portable edit file (exactly the changed tensors + sidecar), see :mod:`iceb.editfile`.

    ``mode`` is the run's :class:`editors.run.EditMode`; ``common`` holds the :func:`~iceb.editfile.save_edit`
    arguments that every edit count of a run shares (``editor``, ``hparams``, ``model``)."""
    from iceb.editfile import save_edit

    save_edit(stem.with_suffix(".safetensors"), result, **common, requests=inst.requests, mode=str(mode),
              extra={"task": inst.task, "n_edits": inst.n_edits, "task_fingerprint": inst.fingerprint(),
                     "edit_seconds": result.timings.get("edit_seconds"), "rounds": mode.rounds})


def load_delta(stem: Path):
    """``(tensors, sidecar)`` of a saved edit."""
    from iceb.editfile import load_edit

    edit = load_edit(stem.with_suffix(".safetensors"))
    return edit.tensors, edit.meta
