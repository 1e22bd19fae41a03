"""Peak memory of one block of work: the process's resident set on CPU, the allocator's peak on CUDA.

Why not ``resource.getrusage(...).ru_maxrss``: it is the peak of the whole process's life, so an edit that
follows a bigger pre-edit render would report the render's peak. On Linux, writing ``5`` to
``/proc/self/clear_refs`` resets the high-water mark (``VmHWM`` in ``/proc/self/status``, kernel >= 4.0), so
the peak read after the block is the block's own (plus whatever was resident when it began, which is part of
what a user needs free). Where that is not possible the lifetime peak is reported and ``rss_scope`` says so.
CUDA: ``torch.cuda.reset_peak_memory_stats`` / ``max_memory_allocated`` of the current device, only when CUDA
is already initialised (measuring never starts a CUDA context)."""
from __future__ import annotations

import contextlib
import re
import sys
from typing import Any, Iterator

_STATUS = "/proc/self/status"
_CLEAR = "/proc/self/clear_refs"


def _vm_hwm_kib() -> int | None:
    try:
        with open(_STATUS) as f:
            m = re.search(r"^VmHWM:\s+(\d+)\s+kB", f.read(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _reset_hwm() -> bool:
    try:
        with open(_CLEAR, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _lifetime_peak_mib() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


@contextlib.contextmanager
def peak_memory() -> Iterator[dict[str, Any]]:
    """Measure the peak memory of the ``with`` block into the yielded dict (filled when the block ends).

    Yields:
        A dict that gets ``peak_rss_mb`` (MiB; None where unknown), ``rss_scope`` (``"block"``: the block's
        own peak; ``"process"``: the process's lifetime peak, the best this platform offers) and, when CUDA
        is in use, ``peak_cuda_mb`` (MiB allocated at the peak on the current device).
    """
    out: dict[str, Any] = {}
    scoped = _vm_hwm_kib() is not None and _reset_hwm()
    torch = sys.modules.get("torch")
    cuda = torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        yield out
    finally:
        hwm = _vm_hwm_kib() if scoped else None
        if hwm is not None:
            out.update(peak_rss_mb=hwm / 1024, rss_scope="block")
        else:
            out.update(peak_rss_mb=_lifetime_peak_mib(), rss_scope="process")
        if cuda:
            out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20


__all__ = ["peak_memory"]
