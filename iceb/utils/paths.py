"""Where ICEB keeps shipped data and caches (one place, overridable by environment variables)."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Shipped, versioned data made by the project's scripts (tokenizer files, splits, toy-world bundle).
DATA_DIR = Path(os.environ.get("ICEB_DATA_DIR", REPO_ROOT / "data"))


def cache_dir() -> Path:
    """The user cache: ``$ICEB_CACHE``, else ``$XDG_CACHE_HOME/iceb``, else ``~/.cache/iceb``.

    The one root of every cache that outlives a run (editor statistics, stage-I results, downloads), so
    the CLI, the harness and the Python API compute each once per model and reuse it.
    """
    if os.environ.get("ICEB_CACHE"):
        return Path(os.environ["ICEB_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return base / "iceb"


def editor_cache_dir() -> Path:
    """Where editors keep what they compute once per model (second moments, EMCID stage I, ESD
    checkpoints): ``<cache_dir()>/editors``, the same folder for ``iceb edit``, ``iceb evaluate``,
    :func:`iceb.edit_model` and :func:`iceb.evaluate`."""
    return cache_dir() / "editors"


def resolve_editor_cache(cache: str | Path | bool | None) -> Path | None:
    """The editor cache folder an entry point passes to an editor.

    Args:
        cache: True: the shared root (:func:`editor_cache_dir`); False or None: no cache (the explicit
            opt-out, every statistic is recomputed); a path: that folder.

    Returns:
        The folder, or None for no cache.
    """
    if cache is True:
        return editor_cache_dir()
    if cache is False or cache is None:
        return None
    return Path(cache).expanduser()


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
