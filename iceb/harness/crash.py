"""The test hook for resume: ``ICEB_CRASH_AT=<point>`` makes the process die (``os._exit``, like ``kill -9``)
at that named point of a run, so tests can check that a killed run resumes to the rows of an uninterrupted one."""
from __future__ import annotations

import os

CRASH_ENV = "ICEB_CRASH_AT"


def crash_point(name: str) -> None:
    """Die like ``kill -9`` when ``$ICEB_CRASH_AT`` names this point (no cleanup runs)."""
    if os.environ.get(CRASH_ENV) == name:
        os._exit(86)
