"""Downloading reference files into the user cache, with one clear error when it cannot be done."""
from __future__ import annotations

import hashlib
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from iceb.utils.io import atomic_path
from iceb.utils.paths import cache_dir

#: EMCID's official repository, pinned (the ICEB data, COCO-30k captions and hparams live there).
EMCID_COMMIT = "10a392afb502cc2ed6a781c7c56dc179defaf064"
EMCID_RAW = f"https://raw.githubusercontent.com/SilentView/EMCID/{EMCID_COMMIT}"


class DownloadError(RuntimeError):
    pass


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, dest: str | Path | None = None, *, sha256: str | None = None, timeout: float = 30.0,
          local_hint: str = "") -> Path:
    """Download ``url`` to ``dest`` (default: the user cache) unless already there; return the path."""
    dest = Path(dest) if dest else cache_dir() / "downloads" / url.split("://", 1)[-1]
    if dest.is_file() and (sha256 is None or sha256_file(dest) == sha256):
        return dest
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, atomic_path(dest) as tmp:  # noqa: S310
            with open(tmp, "wb") as fh:
                shutil.copyfileobj(resp, fh)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise DownloadError(
            f"could not download {url} ({err}).{(' ' + local_hint) if local_hint else ''}"
        ) from None
    if sha256 is not None and sha256_file(dest) != sha256:
        dest.unlink(missing_ok=True)
        raise DownloadError(f"{url}: checksum mismatch (expected {sha256}); the file was removed")
    return dest
