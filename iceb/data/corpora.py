"""ICEB's named caption corpora for the editors' second-moment statistics (``editors.corpora.CORPORA``).

- ``coco``: the 30k MS-COCO captions of EMCID's release (downloaded once, or ``ICEB_COCO_CSV``);
- ``ccs``: BLIP's ``ccs_filtered.json`` (CC3M+CC12M+SBU), EMCID's corpus (downloaded on request);
- ``toy``: the toy world's captions (``data/toy/captions.txt``);
- ``mini``: a small shipped caption file for tests (``data/captions/mini.txt``).

Each is a function returning the path of a caption file; the editors read the file (dependency inversion:
this module knows nothing of editors). They reach ``editors.corpora.CORPORA`` through the entry-point group
``iceb.corpora`` declared in ``pyproject.toml``: each entry names a function here, so it resolves to whichever
tree is on ``sys.path``, and a source tree's own declarations count even where the installed metadata
predates them (:func:`iceb.utils.registry.source_tree_entry_points`). :func:`register_all` registers them
explicitly.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from iceb.utils.paths import DATA_DIR

CCS_URL = "https://storage.googleapis.com/sfr-vision-language-research/BLIP/datasets/ccs_filtered.json"


def _shipped(name: str, path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"the {name!r} caption corpus is missing ({path})")
    return path


def coco() -> Path:
    """EMCID's 30k COCO captions (``data/coco/coco_30k.csv`` of the release), or the file ``ICEB_COCO_CSV``."""
    from iceb.utils.download import EMCID_RAW, fetch

    if os.environ.get("ICEB_COCO_CSV"):
        return Path(os.environ["ICEB_COCO_CSV"])
    return fetch(f"{EMCID_RAW}/data/coco/coco_30k.csv",
                 local_hint="Set ICEB_COCO_CSV to a local copy of EMCID's data/coco/coco_30k.csv, "
                            "or pass a caption file as the corpus.")


def ccs() -> Path:
    """BLIP's filtered CC3M+CC12M+SBU captions, EMCID's statistics corpus (downloaded on first use)."""
    from iceb.utils.download import fetch

    return fetch(CCS_URL, local_hint="Download ccs_filtered.json elsewhere and pass its path as the corpus.")


def toy() -> Path:
    """The toy world's captions."""
    return _shipped("toy", DATA_DIR / "toy" / "captions.txt")


def toy_1k() -> Path:
    """The 1,536-concept toy world's captions."""
    return _shipped("toy-1k", DATA_DIR / "toy-1k" / "captions.txt")


def mini() -> Path:
    """A small shipped caption file (tests, smoke runs)."""
    return _shipped("mini", DATA_DIR / "captions" / "mini.txt")


BUILTIN: dict[str, Callable[[], Path]] = {"coco": coco, "ccs": ccs, "toy": toy, "toy-1k": toy_1k, "mini": mini}


def register_all(registry: Any) -> None:
    """Register the built-in corpora into ``registry`` (``editors.corpora.CORPORA``); a name a plug-in
    registered already keeps its corpus."""
    for name, fn in BUILTIN.items():
        try:  # replaces an entry point's lazy placeholder of the same function
            registry.register(name, fn, description=(fn.__doc__ or "").strip().splitlines()[0])
        except ValueError:
            pass


__all__ = ["BUILTIN", "CCS_URL", "ccs", "coco", "mini", "register_all", "toy", "toy_1k"]
