"""Read the per-sample logs of a run (``iceb evaluate --log-samples``) into one pandas DataFrame.

The files are ``<run>/samples/n<N>/c#####.jsonl``, one row per scored post-edit image; the columns are
described in :mod:`iceb.harness.samples` (``n_edits``, ``index``, ``group``, ``subset``, ``prompt``,
``seed``, ``true_class``, ``dest_class``, ``image``, then per metric its numbers before and after, e.g.
``p_dest_pre`` / ``p_dest_post`` and ``top5_pre`` / ``top5_post`` of the ICEB panel). JSONL rather than
Parquet: no pyarrow dependency, one small file per chunk written atomically as the run goes, and any JSON
reader (``pandas.read_json(path, lines=True)``, ``jq``) opens it.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

__all__ = ["read_samples"]

_N_DIR = re.compile(r"^n(\d+)$")


def read_samples(run_dir: str | Path, n: int | None = None):
    """The sample rows of ``run_dir`` (all edit counts, or only ``n``), sorted by ``n_edits`` and ``index``.

    Args:
        run_dir: A run folder (``<out>/<run_id>``) evaluated with ``--log-samples``.
        n: Only this edit count; None: every edit count that has samples.

    Returns:
        A :class:`pandas.DataFrame`, one row per scored post-edit image; empty (no columns) when the run has
        no samples. ``image`` is a path relative to ``run_dir``; ``image_path`` is added as an absolute path.

    Example:
        >>> df = read_samples("runs/uce-ace-...")                                   # doctest: +SKIP
        >>> df[(df.subset == "edit") & (df.p_dest_post < 0.5)].sort_values("p_dest_post")  # doctest: +SKIP
    """
    import pandas as pd

    root = Path(run_dir) / "samples"
    if not root.is_dir():
        raise FileNotFoundError(f"{root} does not exist: was {run_dir} evaluated with --log-samples?")
    rows: list[dict[str, Any]] = []
    for d in sorted(root.iterdir()):
        m = _N_DIR.match(d.name)
        if not d.is_dir() or m is None or (n is not None and int(m.group(1)) != n):
            continue
        for f in sorted(d.glob("c*.jsonl")):
            rows.extend(json.loads(line) for line in f.read_text().splitlines() if line.strip())
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df = df.sort_values(["n_edits", "index"], kind="stable").reset_index(drop=True)
    df["image_path"] = [str(Path(run_dir) / p) if isinstance(p, str) else None for p in df["image"]]
    return df
