"""The per-image record cache: metric records of pre-edit images, shared by every editor and edit count."""
from __future__ import annotations

import json
from pathlib import Path


class RecordCache:
    """Per-image metric records of pre-edit images, beside the image cache (``<out>/cache/records``).

    A record is keyed by the metric's ``record_key()`` and the image key; a file that does not parse (a
    writer killed mid-way cannot leave one: writes are atomic) reads as missing."""

    def __init__(self, root: Path):
        self.root = root
        self.hits = 0
        self.misses = 0

    def _path(self, metric_key: str, image_key: str) -> Path:
        return self.root / metric_key / image_key[:2] / f"{image_key}.json"

    def get(self, metric_key: str, image_key: str):
        p = self._path(metric_key, image_key)
        if p.is_file():
            try:
                return json.loads(p.read_text())
            except json.JSONDecodeError:
                return None
        return None

    def put(self, metric_key: str, image_key: str, record) -> None:
        from iceb.utils.io import write_text

        write_text(self._path(metric_key, image_key), json.dumps(record))


_RecordCache = RecordCache  # the old private name
