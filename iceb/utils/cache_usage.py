"""What the cache root holds, by kind, and clearing it (``iceb cache ls`` / ``iceb cache clear``).

A *kind* is the folder of one :class:`~iceb.utils.cache.ContentCache` relative to the root (entries lie in
``<kind>/<key[:2]>/<key>.<ext>``, e.g. ``editors/stats`` or ``editors/emcid/stage1``); files outside that
layout (downloads, EMCID's official files) count under their top-level folder (``downloads``, ``emcid``).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KindUsage:
    """One kind's entries (files) and bytes on disk."""

    kind: str
    entries: int
    bytes: int


def _kind_of(rel: Path) -> str:
    parts = rel.parts
    if len(parts) >= 3 and len(parts[-2]) == 2 and parts[-1].startswith(parts[-2]):
        return "/".join(parts[:-2])
    return parts[0] if len(parts) > 1 else "."


def cache_usage(root: str | Path) -> list[KindUsage]:
    """Every kind under ``root`` with its entry count and size, sorted by kind.

    Args:
        root: The cache root (:func:`iceb.utils.paths.cache_dir`); a missing folder holds nothing.

    Returns:
        One :class:`KindUsage` per kind (temporary files of writers are not counted).
    """
    root = Path(root)
    tally: dict[str, list[int]] = {}
    if root.is_dir():
        for f in root.rglob("*"):
            if f.is_file() and not f.name.endswith(".tmp"):
                t = tally.setdefault(_kind_of(f.relative_to(root)), [0, 0])
                t[0] += 1
                t[1] += f.stat().st_size
    return [KindUsage(k, n, b) for k, (n, b) in sorted(tally.items())]


def kind_folder(root: str | Path, kind: str) -> Path:
    """The folder of ``kind`` (a kind of :func:`cache_usage` or a folder above some, e.g. ``editors``).

    Raises:
        ValueError: ``kind`` names no kind present under ``root`` (the message lists them).
    """
    kinds = [u.kind for u in cache_usage(root)]
    k = str(kind).strip("/")
    if not k or ".." in Path(k).parts or not any(x == k or x.startswith(k + "/") for x in kinds):
        raise ValueError(f"--kind {kind!r}: no such cache kind in {root}; present: {', '.join(kinds) or 'none'}")
    return Path(root) / k


def clear_cache(root: str | Path, kind: str | None = None) -> KindUsage:
    """Remove every entry of ``kind`` (None: the whole root); returns what was removed.

    Args:
        root: The cache root.
        kind: A kind or a folder above kinds; None clears everything under ``root``.

    Returns:
        The removed entries and bytes, as one :class:`KindUsage` (``kind`` ``"*"`` for all).
    """
    root = Path(root)
    target = root if kind is None else kind_folder(root, kind)
    prefix = None if kind is None else str(kind).strip("/")
    gone = [u for u in cache_usage(root) if prefix is None or u.kind == prefix or u.kind.startswith(prefix + "/")]
    if target.is_dir():
        if target == root:
            for child in root.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        else:
            shutil.rmtree(target)
    return KindUsage(prefix or "*", sum(u.entries for u in gone), sum(u.bytes for u in gone))


def human_bytes(n: int) -> str:
    """``1536`` -> ``1.5 KiB``: sizes people read."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
