"""The harness logs through the std logger ``iceb.harness`` (rank 0 only); this module gives it a console.

``iceb`` (the CLI) and :func:`~iceb.harness.evaluate` (when nothing is configured) attach
:class:`ConsoleHandler` to the ``iceb`` logger: the bare message on the *current* ``sys.stdout``, so the
``[iceb] ...`` lines look as they always did, and output captured by a test or a notebook stays captured.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any, Callable, Iterator

logger = logging.getLogger("iceb.harness")


class ConsoleHandler(logging.StreamHandler):
    """Bare messages on whatever ``sys.stdout`` is when a record is emitted."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)
        self.setFormatter(logging.Formatter("%(message)s"))

    @property  # type: ignore[override]
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass


def install_console() -> None:
    """Print INFO lines of every ``iceb.*`` logger to stdout (once; the CLI calls it)."""
    root = logging.getLogger("iceb")
    if not any(isinstance(h, ConsoleHandler) for h in root.handlers):
        root.addHandler(ConsoleHandler())
    if root.level == logging.NOTSET:
        root.setLevel(logging.INFO)


def ensure_console() -> None:
    """:func:`install_console` unless the application has configured logging (any handler on the way up)."""
    if not logger.hasHandlers():
        install_console()
    root = logging.getLogger("iceb")
    if root.level == logging.NOTSET:
        root.setLevel(logging.INFO)


class _CallbackHandler(logging.Handler):
    def __init__(self, fn: Callable[[str], Any]) -> None:
        super().__init__(logging.INFO)
        self.fn = fn

    def emit(self, record: logging.LogRecord) -> None:
        self.fn(record.getMessage())


@contextlib.contextmanager
def lines_to(fn: Callable[[str], Any] | None) -> Iterator[None]:
    """Inside the block the harness's lines go to ``fn`` instead (the ``log=`` callable of older callers);
    ``None``: to the console, see :func:`ensure_console`."""
    if fn is None:
        ensure_console()
        yield
        return
    handler = _CallbackHandler(fn)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
