"""The per-image record cache: metric records of pre-edit images, shared by every editor and edit count."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from iceb.utils.cache import JSON, ContentCache


class RecordCache:
    """Per-image metric records of pre-edit images, beside the image cache (``<out>/cache/records``).

    One :class:`~iceb.utils.cache.ContentCache` of JSON records per metric ``record_key()`` (its folder),
    keyed by the image key; an unreadable entry is a warned miss, recomputed and replaced like any cache's.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.hits = 0
        self.misses = 0
        self._caches: dict[str, ContentCache] = {}

    def _cache(self, metric_key: str) -> ContentCache:
        if metric_key not in self._caches:
            self._caches[metric_key] = ContentCache(self.root / metric_key, f"records/{metric_key}", JSON)
        return self._caches[metric_key]

    def get(self, metric_key: str, image_key: str) -> Any | None:
        """The record, or None when it is not cached (or unreadable)."""
        return self._cache(metric_key).get(image_key)

    def put(self, metric_key: str, image_key: str, record: Any) -> None:
        self._cache(metric_key).put(image_key, record)
