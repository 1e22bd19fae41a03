"""Stable, content-only hashes: one canonical form and one key length for every cache key and run id.

Why a canonical form: ``json.dumps`` of a dict follows its insertion order, and some configs (diffusers'
``_use_default_values``) are built from sets, whose order follows Python's hash seed; a key made that way
changes from process to process. :func:`canonical` sorts mapping keys, turns sets into sorted lists, drops
private keys (leading ``_``) of mappings when asked, and writes floats by ``repr`` (exact), so the same
content gives the same bytes in every process.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Set
from typing import Any

#: hex characters of every ICEB key (64 bits): run ids, cache keys, fingerprints of data
KEY_LENGTH = 16


def _plain(obj: Any, drop_private: bool) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v, drop_private) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))
                if not (drop_private and str(k).startswith("_"))}
    if isinstance(obj, Set):
        return sorted((_plain(v, drop_private) for v in obj), key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(obj, (list, tuple)):
        return [_plain(v, drop_private) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else repr(obj)
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def canonical(obj: Any, *, drop_private: bool = False) -> str:
    """The canonical JSON text of ``obj`` (sorted keys, sets sorted, non-JSON values as ``str``).

    Args:
        obj: any nesting of mappings, sequences, sets and scalars.
        drop_private: leave out mapping keys that start with ``_`` (diffusers' bookkeeping such as
            ``_use_default_values`` or ``_class_name`` paths that do not change what a model computes).

    Returns:
        Compact JSON text, identical for equal content in every process.
    """
    return json.dumps(_plain(obj, drop_private), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def stable_hash(*parts: Any, length: int = KEY_LENGTH, drop_private: bool = False) -> str:
    """A hex key of the canonical form of ``parts``: the one hash behind every ICEB key.

    Args:
        *parts: the things that make the key (strings, numbers, configs, lists...).
        length: hex characters kept (default :data:`KEY_LENGTH`; only file checksums use the full 64).
        drop_private: as in :func:`canonical`.

    Returns:
        The first ``length`` hex characters of the SHA-256 of the canonical JSON of ``parts``.
    """
    return hashlib.sha256(canonical(list(parts), drop_private=drop_private).encode()).hexdigest()[:length]


def seed_from(*parts: Any) -> int:
    """A 31-bit seed derived from ``parts`` (e.g. a request's seed and an image index), the same in every
    process: for ``torch.Generator().manual_seed`` and ``random.Random``.

    Args:
        *parts: what the seed depends on.

    Returns:
        An int in ``[0, 2**31)``.
    """
    return int(hashlib.sha256(canonical(list(parts)).encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def digest_files(*paths: Any, length: int = KEY_LENGTH) -> str:
    """A hex key of the bytes of files, read in order (the identity of a task file or of edit files).

    Args:
        *paths: files to read.
        length: hex characters kept (default :data:`KEY_LENGTH`).

    Returns:
        The first ``length`` hex characters of the SHA-256 of the files' concatenated bytes.
    """
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:length]


def fixed_sample(n: int, k: int | None, *key: Any) -> list[int]:
    """A deterministic sorted sample of ``k`` of ``range(n)`` seeded by ``key`` (all of them when ``k`` is None
    or ``n <= k``): the one way ICEB picks which requests an attack targets or a large edit count scores.

    Args:
        n: The population size (e.g. the edit count).
        k: The sample size, or None for all.
        *key: What seeds the draw (e.g. ``"score-sample", task, split, n``).

    Returns:
        Sorted indices.
    """
    import random

    if k is None or n <= k:
        return list(range(n))
    return sorted(random.Random(int(stable_hash(*key), 16)).sample(range(n), k))

