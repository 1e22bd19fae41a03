"""Caption corpora for the second-moment statistics: a caption file, or a name from the corpus registry.

Editors read caption files only; which named corpora exist is the business of whoever installs them (dependency
inversion): :data:`CORPORA` is filled through the entry-point group ``iceb.corpora`` (ICEB's own ``coco``,
``ccs``, ``toy``, ``toy-1k`` and ``mini`` live in ``iceb.data.corpora`` and are declared in ``pyproject.toml``) or by
:func:`register_corpus`. An entry is a zero-argument callable returning the path of a caption file or the
captions themselves.

A caption file is a ``.txt`` file with one caption per line, a ``.csv`` with a ``prompt``, ``caption`` or
``text`` column, or a ``.json`` list of strings or of records with a ``caption`` field.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Callable

from iceb.utils.registry import Registry, UnknownNameError

#: name -> zero-argument callable returning a caption file path or a list of captions
CORPORA: Registry = Registry("corpus", entry_point_group="iceb.corpora", plural="corpora")

CAPTION_SUFFIXES = (".txt", ".csv", ".json")


class UnknownCorpusError(UnknownNameError, ValueError):
    """A corpus name that is neither registered nor an existing caption file (names the closest match)."""


def register_corpus(name: str, loader: Callable[[], Any] | str | None = None, *, description: str = ""):
    """Register a named corpus: ``register_corpus("mine", fn)``, ``register_corpus("mine", "pkg.mod:fn")`` (lazy)
    or ``@register_corpus("mine")`` on a zero-argument function returning a caption file path or the captions."""
    return CORPORA.register(name, loader, description=description)


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
    """Captions of a registered corpus or of a caption file.

    Raises:
        FileNotFoundError: ``name`` looks like a caption file path that does not exist, or a corpus's file is
            missing.
        UnknownCorpusError: (a ``ValueError``) an unknown name; the message lists the known names and the
            closest one.
    """
    if name in CORPORA:
        value = CORPORA.get(name)()
        return read_caption_file(value) if isinstance(value, (str, Path)) else [str(c) for c in value]
    path = Path(name)
    if path.is_file():
        return read_caption_file(path)
    if path.suffix in CAPTION_SUFFIXES or "/" in name or "\\" in name:
        raise FileNotFoundError(f"caption corpus file {path} does not exist")
    try:
        CORPORA.get(name)
    except UnknownNameError as err:
        raise UnknownCorpusError(f"{err} A caption file path (.txt, .csv, .json) works too.") from None
    raise AssertionError("unreachable")  # pragma: no cover


__all__ = ["CORPORA", "UnknownCorpusError", "load_corpus", "read_caption_file", "register_corpus"]
