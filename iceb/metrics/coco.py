"""COCO-30k captions (EMCID's ``data/coco/coco_30k.csv``) and the matching real COCO val2014 images.

The caption list is read from ``path``, ``$ICEB_COCO_CSV`` or downloaded once from EMCID's pinned repository.
The size is configurable: the first ``n`` rows (1k for a quick run, 30k as the paper). Real images are read
from a local COCO val2014 folder (``$ICEB_COCO_ROOT``), one at a time, centre-cropped to a square and resized
to the generated images' size (EMCID's own real-image preparation is not in its release; this is ours).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from iceb.tasks.base import EvalPrompt

COCO_COLUMNS = ("case_number", "source", "prompt", "evaluation_seed", "coco_id")


@dataclass(frozen=True)
class CocoCaption:
    case_number: int
    prompt: str
    seed: int
    coco_id: int


def coco_csv_path(path: str | Path | None = None) -> Path:
    """A local copy of coco_30k.csv: ``path``, ``$ICEB_COCO_CSV``, or a one-off download into the cache."""
    if path or os.environ.get("ICEB_COCO_CSV"):
        p = Path(path or os.environ["ICEB_COCO_CSV"])
        if not p.is_file():
            raise FileNotFoundError(f"COCO caption file {p} does not exist")
        return p
    from iceb.utils.download import EMCID_RAW, fetch

    return fetch(f"{EMCID_RAW}/data/coco/coco_30k.csv",
                 local_hint="Set ICEB_COCO_CSV to a local copy of EMCID's data/coco/coco_30k.csv.")


def load_coco_captions(n: int | None = None, path: str | Path | None = None) -> list[CocoCaption]:
    """The first ``n`` captions (all 30k when None), with their evaluation seeds and COCO ids."""
    if n is not None and n < 1:
        raise ValueError(f"n must be a positive number of captions, got {n}")
    p = coco_csv_path(path)
    out: list[CocoCaption] = []
    from iceb.utils.io import csv_reader

    with csv_reader(p, COCO_COLUMNS) as reader:
        for line, row in enumerate(reader, start=2):
            if n is not None and len(out) >= n:
                break
            try:
                out.append(CocoCaption(int(row["case_number"]), row["prompt"], int(row["evaluation_seed"]),
                                       int(row["coco_id"])))
            except (TypeError, ValueError) as err:
                raise ValueError(f"{p}, line {line}: bad row {dict(row)} ({err})") from None
    if n is not None and len(out) < n:
        raise ValueError(f"{p} has only {len(out)} captions; {n} were asked for")
    return out


def coco_prompts(n: int = 1000, path: str | Path | None = None, subset: str = "holdout") -> list[EvalPrompt]:
    """COCO captions as evaluation prompts (not edited concepts: ``holdout`` by default), one group each."""
    return [EvalPrompt(c.prompt, c.seed, subset, None, None, f"coco-{c.case_number}")
            for c in load_coco_captions(n, path)]


def coco_image_path(root: str | Path, coco_id: int) -> Path:
    """The val2014 file of ``coco_id`` under ``root`` (``root/`` or ``root/val2014/``)."""
    root = Path(root)
    name = f"COCO_val2014_{int(coco_id):012d}.jpg"
    for cand in (root / name, root / "val2014" / name, root / f"{int(coco_id):012d}.jpg"):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"COCO image {name} (coco_id {coco_id}) is not in {root} or {root / 'val2014'}; "
                            f"set ICEB_COCO_ROOT to a folder holding COCO val2014")


def load_real_image(path: str | Path, size: int = 512) -> np.ndarray:
    """A real image as uint8 HxWx3: centre square crop, bicubic resize to ``size``."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        im = im.crop((left, top, left + s, top + s)).resize((size, size), Image.BICUBIC)
        return np.asarray(im, dtype=np.uint8)
