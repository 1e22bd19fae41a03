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
