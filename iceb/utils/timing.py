"""One wall-clock timer for editors and the benchmark: ``with timer("stage1"): ...`` adds the block's seconds
(``time.perf_counter``) to ``timer.timings["stage1"]``; a key timed twice accumulates."""
from __future__ import annotations

import contextlib
import time
from typing import Iterator


class Timer:
    """Accumulates wall seconds per key into :attr:`timings` (a plain dict, e.g. an ``EditResult``'s)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - t0

    def __getitem__(self, key: str) -> float:
        return self.timings.get(key, 0.0)


__all__ = ["Timer"]
