"""The plan of a run, as written to ``manifest.json``: chunk boundaries and what each edit count holds.

Chunk boundaries come from the manifest, never from the number of processes, so K processes render the same
batches as one; a resumed run keeps the chunk size it started with.
"""
from __future__ import annotations

from typing import Any

from iceb.leaderboard.results import config_hash

MANIFEST_VERSION = 1
GRID_CONCEPTS = 8  # edited concepts shown in each before/after grid


class ManifestMismatchError(ValueError):
    """The run folder's plan differs from the plan of this command (task data or chunking changed)."""


def chunks(count: int, size: int) -> list[list[int]]:
    """``[0..size), [size..2 size), ...`` up to ``count``: the work items of a list of images."""
    return [list(range(i, min(i + size, count))) for i in range(0, count, size)]


def grid_indices(inst) -> list[int]:
    """Prompt indices of a before/after grid: the first edit prompt of the first requests, plus holdouts."""
    seen: dict[str, int] = {}
    holdout: list[int] = []
    for i, p in enumerate(inst.prompts):
        if p.subset == "edit" and p.group not in seen and len(seen) < GRID_CONCEPTS:
            seen[p.group] = i
        elif p.subset == "holdout" and len(holdout) < 2:
            holdout.append(i)
    return list(seen.values()) + holdout


def build_plan(run_id: str, instances: dict[int, Any], pre_keys: list[str], chunk: int) -> dict[str, Any]:
    """The manifest: the pre-edit chunks (the union of every edit count's images) and, per edit count, its
    requests, prompts, chunks, task fingerprint and grid. ``instances`` maps each edit count, in run order,
    to its task instance."""
    return {
        "manifest_version": MANIFEST_VERSION, "run_id": run_id, "chunk_size": chunk,
        "pre": {"images": len(pre_keys), "chunks": len(chunks(len(pre_keys), chunk)),
                "keys_hash": config_hash({"keys": pre_keys})},
        "edit_counts": {str(n): _plan_n(inst, chunk) for n, inst in instances.items()},
    }


def _plan_n(inst, chunk: int) -> dict[str, Any]:
    grid = grid_indices(inst)
    return {"requests": len(inst.requests), "prompts": len(inst.prompts),
            "chunks": len(chunks(len(inst.prompts), chunk)), "fingerprint": inst.fingerprint(), "grid": grid,
            "grid_prompts": [inst.prompts[i].prompt for i in grid],
            "grid_rows": [grid_row_label(inst, inst.prompts[i]) for i in grid]}


#: manifest keys that describe the run for readers (the report), not the work: a resume ignores them
DISPLAY_KEYS = ("grid_rows",)


def grid_row_label(inst, prompt) -> str:
    """What a grid row shows: ``source → destination: <prompt>`` for an edit prompt (``source → (erased)`` for an
    erasure), ``holdout (should not change): <prompt>`` for a holdout one."""
    if prompt.subset == "holdout":
        return f"holdout (should not change): {prompt.prompt}"
    for r in inst.requests:
        if (r.request_id or "") == prompt.group or (not r.request_id and r.source in prompt.prompt):
            return f"{r.source} → {r.destination or '(erased)'}: {prompt.prompt}"
    return prompt.prompt


def same_work(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether two manifests plan the same work (:data:`DISPLAY_KEYS` aside, so older run folders resume)."""
    def strip(m: dict[str, Any]) -> dict[str, Any]:
        return {**m, "edit_counts": {n: {k: v for k, v in e.items() if k not in DISPLAY_KEYS}
                                     for n, e in (m.get("edit_counts") or {}).items()}}

    return strip(old) == strip(new)
