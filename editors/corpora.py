"""Caption corpora for the second-moment statistics: a name or a file, sampled with a fixed seed.

- ``coco``: the 30k MS-COCO captions of EMCID's release (downloaded once, or ``ICEB_COCO_CSV``).
- ``ccs``: BLIP's ``ccs_filtered.json`` (CC3M+CC12M+SBU), EMCID's corpus (downloaded on request).
- a path: a ``.txt`` file with one caption per line, a ``.csv`` with a ``prompt`` or ``caption`` column,
  or a ``.json`` list of strings or of records with a ``caption`` field.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

CCS_URL = "https://storage.googleapis.com/sfr-vision-language-research/BLIP/datasets/ccs_filtered.json"


def _coco_path() -> Path:
    from iceb.utils.download import EMCID_RAW, fetch

    if os.environ.get("ICEB_COCO_CSV"):
        return Path(os.environ["ICEB_COCO_CSV"])
    return fetch(f"{EMCID_RAW}/data/coco/coco_30k.csv",
                 local_hint="Set ICEB_COCO_CSV to a local copy of EMCID's data/coco/coco_30k.csv, "
                            "or pass a caption file as the corpus.")


def read_caption_file(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caption corpus file {path} does not exist")
    if path.suffix == ".txt":
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if path.suffix == ".csv":
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            column = next((c for c in ("prompt", "caption", "text") if c in (reader.fieldnames or [])), None)
            if column is None:
                raise ValueError(f"{path}: a caption CSV needs a 'prompt', 'caption' or 'text' column")
            return [row[column] for row in reader if row[column]]
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list")
        return [d if isinstance(d, str) else d["caption"] for d in data]
    raise ValueError(f"{path}: unsupported caption file type {path.suffix!r} (use .txt, .csv or .json)")


def load_corpus(name: str) -> list[str]:
    """Captions of a named corpus or a file. Names: coco, ccs, toy (the toy world's captions), mini."""
    from iceb.utils.paths import DATA_DIR

    shipped = {"toy": DATA_DIR / "toy" / "captions.txt", "mini": DATA_DIR / "captions" / "mini.txt"}
    if name in shipped:
        if not shipped[name].is_file():
            raise FileNotFoundError(f"the {name!r} caption corpus is missing ({shipped[name]})")
        return read_caption_file(shipped[name])
    if name == "coco":
        return read_caption_file(_coco_path())
    if name == "ccs":
        from iceb.utils.download import fetch

        path = fetch(CCS_URL, local_hint="Download ccs_filtered.json elsewhere and pass its path as the corpus.")
        return read_caption_file(path)
    if Path(name).exists():
        return read_caption_file(name)
    raise ValueError(f"unknown caption corpus {name!r}: use 'coco', 'ccs' or a caption file path")
