"""Run folders and tidy result rows.

A run folder ``<out>/<run_id>/`` holds ``config.json`` (resolved config with package versions, git
revision and data hashes), ``results.jsonl`` (append-only, one tidy row per (editor, model, task, N,
subset, metric)) and ``edits/`` (the edit deltas as safetensors with JSON sidecars). Rows of one edit count
are appended in one write that ends with a completion marker; a reader keeps only completed blocks, so a
run killed mid-write resumes to exactly the rows an uninterrupted run writes.
"""
from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path
from typing import Any, Iterable

from iceb.leaderboard.schema import ROW_COLUMNS, check_row
from iceb.utils.hashing import stable_hash
from iceb.utils.io import append_jsonl, iter_jsonl, read_json, read_jsonl

#: how tables, plots and reports mark rows of ``--limit`` runs
SMOKE_MARK = "SMOKE (--limit): not comparable"


class RunLockedError(RuntimeError):
    pass


def config_hash(config: dict[str, Any]) -> str:
    """The run-id hash of a config: :func:`iceb.utils.hashing.stable_hash`, with the one key length."""
    return stable_hash(config)


def git_revision() -> str | None:
    from iceb.utils.paths import REPO_ROOT

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
        rev = out.stdout.strip() if out.returncode == 0 else None
        if rev:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def package_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("iceb", "torch", "diffusers", "transformers", "open_clip_torch", "timm", "torchmetrics", "accelerate",
                "safetensors", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def append_block(path: Path, rows: list[dict[str, Any]], block: dict[str, Any]) -> None:
    """Append one edit count's rows plus its completion marker in a single write."""
    tagged = [{**r, "kind": "result", "block": block["block"]} for r in rows]
    append_jsonl(path, tagged + [{**block, "kind": "done"}])


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The result rows of completed blocks only (the last completed block wins for a repeated key).

    Args:
        path: a run's ``results.jsonl``.

    Returns:
        The rows as dicts with exactly :data:`~iceb.leaderboard.schema.ROW_COLUMNS`, in file order.

    Raises:
        ValueError: ``"<file>:<line>: ..."`` for a row with a missing field or a field of the wrong type.
    """
    path = Path(path)
    lines = list(iter_jsonl(path))
    done = {r["block"]: r for _, r in lines if r.get("kind") == "done"}
    last_block = {b["key"]: b["block"] for b in done.values()}  # the last completed block per key
    by_key: dict[Any, list[tuple[int, dict[str, Any]]]] = {}
    for i, r in lines:
        if r.get("kind") == "result" and r.get("block") in done:
            by_key.setdefault(done[r["block"]]["key"], []).append((i, r))
    out = []
    for key, rows in by_key.items():
        for i, r in rows:
            if r["block"] != last_block[key]:
                continue
            if "run_hash" not in r and isinstance(r.get("run_id"), str):
                # rows written before the schema had a run_hash field: the hash is the run id's last part
                # ("<editor>-<task>-<hash>", "-smoke" appended for --limit runs). Derived here, once, so that
                # nothing downstream parses run ids.
                rid = r["run_id"].removesuffix("-smoke") if r.get("smoke") is True else r["run_id"]
                r = {**r, "run_hash": rid.rsplit("-", 1)[-1]}
            try:
                out.append(check_row(r).to_dict())
            except ValueError as err:
                raise ValueError(f"{path}:{i}: {err}") from None
    return out


def is_cost_row(row: dict[str, Any]) -> bool:
    """A row of the edit's cost (seconds, memory, file size: measurements of this machine, not of the edit)."""
    return row["subset"] == "cost" or row["subset"].startswith("cost:") or row["metric"] == "edit_seconds"


def comparable(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as two runs of one configuration must give them identically: cost rows keep their metric but
    lose their value and cache state (which depend on the machine and on what was cached), sorted.

    Args:
        rows: Result rows (e.g. :func:`read_rows`).

    Returns:
        New row dicts, sorted by their JSON form.
    """
    out = [{**r, "value": None, "subset": "cost"} if is_cost_row(r) else dict(r) for r in rows]
    return sorted(out, key=lambda r: json.dumps(r, sort_keys=True, default=str))


def completed_keys(path: str | Path) -> set[str]:
    return {r["key"] for r in read_jsonl(path) if r.get("kind") == "done"}


def rows_to_frame(rows: Iterable[dict[str, Any]]):
    import pandas as pd

    df = pd.DataFrame(list(rows))
    if df.empty:
        return pd.DataFrame(columns=ROW_COLUMNS)
    cols = [c for c in ROW_COLUMNS if c in df.columns] + [c for c in df.columns if c not in ROW_COLUMNS]
    return df[cols].sort_values(["task", "editor", "model", "n_edits", "subset", "metric"], kind="stable")


def write_csv(rows: Iterable[dict[str, Any]], path: str | Path) -> Path:
    from iceb.utils.io import atomic_path

    df = rows_to_frame(rows)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return Path(path)


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    run_dir = Path(run_dir)
    cfg_path, res_path = run_dir / "config.json", run_dir / "results.jsonl"
    if not res_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not an ICEB run folder (no results.jsonl)")
    config = read_json(cfg_path) if cfg_path.is_file() else {}
    return config, read_rows(res_path)
