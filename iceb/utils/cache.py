"""One content-addressed cache for every on-disk cache of tensors or images (editors and benchmark alike).

An entry is one file, ``<root>/<key[:2]>/<key>.<ext>``, written atomically (:func:`iceb.utils.io.atomic_path`)
and read through a small codec: :data:`TENSORS` (safetensors: a ``dict[str, Tensor]`` plus ``str -> str``
metadata) or :data:`PNG` (one ``uint8`` HxWx3 image; metadata as PNG text chunks) or :data:`JSON` (a metric's
per-image record). Nothing is pickled.

Keys come from :func:`iceb.utils.hashing.stable_hash` over everything the value depends on, so a key is the
same in every process and a changed input is a new key: entries are never invalidated, only added.

Failure modes:

- a corrupt or truncated entry (a killed writer on a filesystem without atomic rename, a copied cache, a
  full disk) is a miss: a warning names the file, the file is removed, and the caller recomputes and puts
  the value again;
- stale temporary files of killed writers (``.<name>.*.tmp``, older than an hour) are removed when the
  cache is opened;
- ``root=None`` is a disabled cache: every ``get`` misses and ``put`` stores nothing.
"""
from __future__ import annotations

import os
import re
import time
import warnings
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

V = TypeVar("V")

#: seconds after which a writer's temporary file is considered left behind by a killed process
STALE_TMP_SECONDS = 3600.0

_KEY = re.compile(r"[0-9A-Za-z_-]{3,128}")


class Codec(Protocol[V]):
    """How one kind of value is written to and read from one file."""

    ext: str

    def write(self, path: Path, value: V, meta: dict[str, str]) -> None: ...

    def read(self, path: Path) -> tuple[V, dict[str, str]]: ...


class TensorCodec:
    """``dict[str, Tensor]`` as safetensors; metadata in the safetensors header."""

    ext = "safetensors"

    def write(self, path: Path, value: dict[str, Any], meta: dict[str, str]) -> None:
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous().cpu() for k, v in value.items()}, str(path), metadata=meta)

    def read(self, path: Path) -> tuple[dict[str, Any], dict[str, str]]:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        return tensors, meta


class PNGCodec:
    """One RGB ``uint8`` image (HxWx3 numpy array) as PNG; metadata as text chunks."""

    ext = "png"

    def write(self, path: Path, value: Any, meta: dict[str, str]) -> None:
        from PIL import Image, PngImagePlugin

        info = None
        if meta:
            info = PngImagePlugin.PngInfo()
            for k, v in meta.items():
                info.add_text(k, v)
        Image.fromarray(value).save(path, format="PNG", pnginfo=info)

    def read(self, path: Path) -> tuple[Any, dict[str, str]]:
        import numpy as np
        from PIL import Image

        with Image.open(path) as im:
            im.load()  # decodes every byte: a truncated file raises here, not later
            meta = {str(k): str(v) for k, v in getattr(im, "text", {}).items()}
            return np.asarray(im.convert("RGB")), meta


class JSONCodec:
    """A JSON value (a metric's per-image record); metadata, when given, wraps it as
    ``{"iceb_value": ..., "iceb_meta": {...}}``, else the file is the bare value (so earlier caches read)."""

    ext = "json"

    def write(self, path: Path, value: Any, meta: dict[str, str]) -> None:
        import json

        path.write_text(json.dumps({"iceb_value": value, "iceb_meta": meta} if meta else value))

    def read(self, path: Path) -> tuple[Any, dict[str, str]]:
        import json

        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and set(data) == {"iceb_value", "iceb_meta"}:
            return data["iceb_value"], dict(data["iceb_meta"])
        return data, {}


TENSORS = TensorCodec()
PNG = PNGCodec()
JSON = JSONCodec()


_TALLY: dict[str, list[int]] = {}  # kind -> [hits, misses] over every ContentCache of this process


def cache_tally() -> dict[str, tuple[int, int]]:
    """A snapshot of ``{kind: (hits, misses)}`` summed over every :class:`ContentCache` of this process so far;
    the difference of two snapshots is what happened in between."""
    return {k: (h, m) for k, (h, m) in _TALLY.items()}


class ContentCache(Generic[V]):
    """A content-addressed store of values under ``root``, sharded by the first two key characters.

    Args:
        root: the folder holding the shards; None disables the cache.
        kind: what it holds (``"emcid-stage1"``, ``"stats"``, ``"images"``...): named in warnings and written
            into each entry's metadata; an entry of another kind under the same key is a miss.
        codec: :data:`TENSORS` (default) or :data:`PNG`, or any object with ``ext``, ``write`` and ``read``.

    Attributes:
        hits, misses: counts of :meth:`get`/:meth:`entry` calls that found / did not find a usable entry
            (callers that count on their own may add to them); every change is also added to the process-wide
            :func:`cache_tally` of the cache's ``kind``, which is how an edit's cost says which of its phases
            ran from cache (:func:`editors.run.run_editor`), whatever cache object the editor made.
        puts: entries written.
        corrupt: unreadable entries met (each also counts as a miss).
    """

    def __init__(self, root: str | Path | None, kind: str, codec: Codec[V] | None = None, *,
                 stale_tmp_seconds: float = STALE_TMP_SECONDS) -> None:
        self.root = Path(root) if root is not None else None
        self.kind = kind
        self.codec: Codec[V] = codec if codec is not None else TENSORS  # type: ignore[assignment]
        self._hits = 0
        self._misses = 0
        self.puts = 0
        self.corrupt = 0
        if self.root is not None:
            self.clean_stale_tmp(stale_tmp_seconds)

    @property
    def hits(self) -> int:
        return self._hits

    @hits.setter
    def hits(self, value: int) -> None:
        _TALLY.setdefault(self.kind, [0, 0])[0] += value - self._hits
        self._hits = value

    @property
    def misses(self) -> int:
        return self._misses

    @misses.setter
    def misses(self, value: int) -> None:
        _TALLY.setdefault(self.kind, [0, 0])[1] += value - self._misses
        self._misses = value

    # -- layout ---------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return self.root is not None

    def path(self, key: str) -> Path:
        """Where the entry for ``key`` lives (whether or not it exists)."""
        if self.root is None:
            raise ValueError(f"the {self.kind} cache is disabled (no cache folder)")
        if not _KEY.fullmatch(key):
            raise ValueError(f"{key!r} is not a cache key (3-128 characters of [0-9A-Za-z_-])")
        return self.root / key[:2] / f"{key}.{self.codec.ext}"

    def __contains__(self, key: str) -> bool:
        return self.root is not None and self.path(key).is_file()

    def keys(self) -> list[str]:
        """Keys of the entries on disk (sorted)."""
        if self.root is None or not self.root.is_dir():
            return []
        suffix = f".{self.codec.ext}"
        return sorted(p.name[:-len(suffix)] for p in self.root.glob(f"*/*{suffix}") if not p.name.startswith("."))

    # -- reading --------------------------------------------------------------------------------
    def entry(self, key: str) -> tuple[V, dict[str, str]] | None:
        """``(value, metadata)`` of ``key``, or None (a miss) when absent, unreadable or of another kind."""
        if self.root is None:
            self.misses += 1
            return None
        p = self.path(key)
        if not p.is_file():
            self.misses += 1
            return None
        try:
            value, meta = self.codec.read(p)
        except Exception as err:  # noqa: BLE001 - any unreadable file is a miss, whatever the reader raises
            self._discard(p, f"unreadable ({type(err).__name__}: {err})")
            return None
        if meta.get("iceb_cache_kind", self.kind) != self.kind or meta.get("iceb_cache_key", key) != key:
            self._discard(p, f"written for another entry (kind {meta.get('iceb_cache_kind')!r}, "
                             f"key {meta.get('iceb_cache_key')!r})")
            return None
        self.hits += 1
        return value, {k: v for k, v in meta.items() if not k.startswith("iceb_cache_")}

    def get(self, key: str) -> V | None:
        """The value of ``key``, or None (a miss)."""
        found = self.entry(key)
        return None if found is None else found[0]

    def _discard(self, p: Path, why: str) -> None:
        warnings.warn(f"{self.kind} cache: ignoring {p}: {why}; it is recomputed and replaced", stacklevel=3)
        self.corrupt += 1
        self.misses += 1
        try:
            p.unlink()
        except OSError:
            pass

    # -- writing --------------------------------------------------------------------------------
    def put(self, key: str, value: V, meta: dict[str, Any] | None = None) -> Path | None:
        """Store ``value`` under ``key`` (atomic; replaces any entry). ``meta`` values are written as str."""
        if self.root is None:
            return None
        from iceb.utils.io import atomic_path

        p = self.path(key)
        full = {str(k): str(v) for k, v in (meta or {}).items()}
        if isinstance(self.codec, TensorCodec):
            full.update(iceb_cache_kind=self.kind, iceb_cache_key=key)
        with atomic_path(p) as tmp:
            self.codec.write(tmp, value, full)
        self.puts += 1
        return p

    def clean_stale_tmp(self, older_than: float = STALE_TMP_SECONDS) -> int:
        """Remove writers' temporary files (``.<name>.*.tmp``) older than ``older_than`` seconds; their count."""
        if self.root is None or not self.root.is_dir():
            return 0
        cutoff = time.time() - older_than
        removed = 0
        for folder, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(".") and name.endswith(".tmp"):
                    p = Path(folder) / name
                    try:
                        if p.stat().st_mtime < cutoff:
                            p.unlink()
                            removed += 1
                    except OSError:
                        pass
        return removed

    def __repr__(self) -> str:
        return (f"ContentCache({str(self.root)!r}, {self.kind!r}, hits={self.hits}, misses={self.misses}, "
                f"puts={self.puts})")


__all__ = ["PNG", "STALE_TMP_SECONDS", "TENSORS", "Codec", "ContentCache", "PNGCodec", "TensorCodec", "cache_tally"]
