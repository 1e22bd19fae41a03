"""Per-sample logs (``--log-samples``), in the manner of lm-evaluation-harness: one row per scored post-edit image.

Layout: ``<run>/samples/n<N>/c#####.jsonl`` (one atomic file per chunk of the manifest, the same chunks as
``work/n<N>/c#####.json``) and ``<run>/samples/n<N>/img/<index>.png`` (every post-edit image, kept). Read
them with :func:`iceb.leaderboard.samples.read_samples`.

A row (keys sorted in the file):

- ``n_edits``, ``index`` (the prompt's position in the task instance of N, the PNG's name), ``group`` (the
  request the prompt belongs to), ``subset``, ``prompt``, ``seed``, ``true_class``, ``dest_class`` (as the
  prompt carries them), ``image`` (the PNG's path relative to the run folder; None when it was not saved);
- the ICEB panel (``iceb-cls``) columns, unprefixed: ``p_source_pre/post`` (P(true class) on prompts that
  name a request's source: subsets edit, general, alias; None elsewhere), ``p_dest_pre/post`` (P(dest)),
  ``p_true_pre/post`` (P(the class the prompt names)), ``top5_pre/post`` (the top-5 class ids, most likely
  first) and ``top5_p_pre/post`` (their probabilities). The panel's records hold the probabilities of the
  prompt's own classes and the top-5 only, not the full vector, so that is what is logged;
- ``image_change``: the mean absolute change of the 16x16 thumbnails of ``image-change`` (the per-image
  value its aggregate averages);
- any other metric: each number (int, float, bool) at the top level of its record, as
  ``<metric>.<field>_pre`` / ``_post``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from iceb.utils.io import write_text

SOURCE_SUBSETS = ("edit", "general", "alias")


def samples_dir(run_dir: Path, n: int) -> Path:
    return Path(run_dir) / "samples" / f"n{n}"


def chunk_path(run_dir: Path, n: int, ci: int) -> Path:
    return samples_dir(run_dir, n) / f"c{ci:05d}.jsonl"


def image_path(run_dir: Path, n: int, index: int) -> Path:
    return samples_dir(run_dir, n) / "img" / f"{index}.png"


def _num(x: Any) -> Any:
    return x if isinstance(x, (bool, int, float)) or x is None else None


def _panel(p, pre: Mapping[str, Any] | None, post: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for when, rec in (("pre", pre), ("post", post)):
        probs = (rec or {}).get("p") or {}
        true = probs.get(str(p.true_class)) if p.true_class is not None else None
        out[f"p_true_{when}"] = true
        out[f"p_source_{when}"] = true if p.subset in SOURCE_SUBSETS and p.dest_class is not None else None
        out[f"p_dest_{when}"] = probs.get(str(p.dest_class)) if p.dest_class is not None else None
        out[f"top5_{when}"] = list((rec or {}).get("top5_ids") or []) or None
        out[f"top5_p_{when}"] = list((rec or {}).get("top5_p") or []) or None
    return out


def _image_change(pre: Mapping[str, Any] | None, post: Mapping[str, Any] | None) -> dict[str, Any]:
    import numpy as np

    if not pre or not post or "thumb" not in pre or "thumb" not in post:
        return {"image_change": None}
    return {"image_change": float(np.abs(np.asarray(pre["thumb"]) - np.asarray(post["thumb"])).mean())}


def _generic(name: str, pre: Mapping[str, Any] | None, post: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for when, rec in (("pre", pre), ("post", post)):
        for k, v in (rec or {}).items():
            if isinstance(v, (bool, int, float)):
                out[f"{name}.{k}_{when}"] = v
    return out


def sample_row(n: int, index: int, p, pre: Mapping[str, Any], post: Mapping[str, Any],
               image: str | None) -> dict[str, Any]:
    """The row of prompt ``p`` (index ``index`` of N); ``pre``/``post``: metric name -> record."""
    row: dict[str, Any] = {"n_edits": n, "index": index, "group": p.group, "subset": p.subset,
                           "prompt": p.prompt, "seed": p.seed, "true_class": p.true_class,
                           "dest_class": p.dest_class, "image": image}
    for name in pre.keys() | post.keys():
        a, b = pre.get(name), post.get(name)
        if name == "iceb-cls":
            row.update(_panel(p, a, b))
        elif name == "image-change":
            row.update(_image_change(a, b))
        else:
            row.update(_generic(name, a, b))
    return row


def write_chunk(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """One chunk's rows as JSONL, written atomically (a reader never sees half a chunk)."""
    write_text(path, "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows))
