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


#: A local copy of EMCID's ``data/`` folder (e.g. ``../shared/reference/emcid/data``), read before any download.
EMCID_DATA_ENV = "ICEB_EMCID_DATA"


def emcid_file(relpath: str, *, sha256: str | None, path: str | Path | None = None,
               env_var: str | None = None) -> Path:
    """One released file of EMCID's repository (``relpath`` under ``data/``), from the first place that has it.

    The places, in order: ``path`` (a file), ``$env_var`` (a file), ``$ICEB_EMCID_DATA/<relpath>`` (a local copy
    of EMCID's ``data/`` folder), the user cache, and last a one-off download from the pinned commit
    (sha256-checked), so a user on a machine with internet needs nothing, and one without points a variable at a
    copy.

    Args:
        relpath: The file's path under EMCID's ``data/`` folder, e.g. ``"debias/TIMED_gender_test_set_processed.csv"``.
        sha256: The file's checksum at the pinned commit (None: not checked).
        path: An explicit local file, used as it is.
        env_var: A variable that may name a local copy of this one file.

    Returns:
        The local path of the file.

    Raises:
        FileNotFoundError: ``path`` or ``$env_var`` names a missing file.
        DownloadError: The file is nowhere local and cannot be downloaded (the message names the variables).
    """
    import os

    explicit = path or (os.environ.get(env_var) if env_var else None)
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise FileNotFoundError(f"{p} (from {'path=' if path else '$' + str(env_var)}) does not exist; it should "
                                    f"be a copy of EMCID's data/{relpath}")
        return p
    root = os.environ.get(EMCID_DATA_ENV)
    if root and (Path(root) / relpath).is_file():
        return Path(root) / relpath
    hint = (f"Set {EMCID_DATA_ENV} to a local copy of EMCID's data/ folder"
            + (f" or {env_var} to a copy of this file" if env_var else "") + ".")
    return fetch(f"{EMCID_RAW}/data/{relpath}", cache_dir() / "emcid" / EMCID_COMMIT[:12] / "data" / relpath,
                 sha256=sha256, local_hint=hint)
