"""Where ICEB keeps shipped data and caches (one place, overridable by environment variables)."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Shipped, versioned data made by the project's scripts (tokenizer files, splits, toy-world bundle).
DATA_DIR = Path(os.environ.get("ICEB_DATA_DIR", REPO_ROOT / "data"))


def cache_dir() -> Path:
    """The user cache: ``$ICEB_CACHE``, else ``$XDG_CACHE_HOME/iceb``, else ``~/.cache/iceb``."""
    if os.environ.get("ICEB_CACHE"):
        return Path(os.environ["ICEB_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "iceb"


def safe_filename(text: object, max_length: int = 64) -> str:
    """A file-name part made from content (a task, model or metric name read from a row): letters, digits,
    ``_ . -`` only, no leading dots, never empty, so a name from someone else's run folder can never
    become a path (``/abs/x`` and ``../../x`` come out as ``abs_x`` and ``x``). Longer than ``max_length``:
    cut, with a hash of the whole name appended (distinct names stay distinct; the file system's name
    limit is never reached by several parts joined)."""
    import re

    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_.-") or "x"
    if len(name) > max_length:
        from iceb.utils.hashing import stable_hash

        name = f"{name[:max_length - 9]}-{stable_hash(str(text), length=8)}"
    return name


def inside(root: str | Path, path: str | Path) -> Path:
    """``path`` if it lies inside ``root`` (after resolving ``..`` and links), else a ValueError: the last
    guard before writing a file whose name came from content."""
    root_r, path_r = Path(root).resolve(), Path(path).resolve()
    if path_r != root_r and root_r not in path_r.parents:
        raise ValueError(f"refusing to write {path}: it lies outside {root}")
    return Path(path)
