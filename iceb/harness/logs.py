"""The harness logs through the std logger ``iceb.harness`` (rank 0 only); this module gives it a console.

``iceb`` (the CLI) and :func:`~iceb.harness.evaluate` (when nothing is configured) attach
:class:`ConsoleHandler` to the ``iceb`` logger: the bare message on the *current* ``sys.stdout``, so the
``[iceb] ...`` lines look as they always did, and output captured by a test or a notebook stays captured.
"""
from __future__ import annotations

import logging
import sys

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
