"""The harness: brings a model, a task, an editor and metrics together for each edit count.

    from iceb.harness import EvalConfig, evaluate
    run_dir = evaluate(EvalConfig(editor="uce", task="ace", edits=(1, 10)))

Modules, one role each (the plan of a run is told in :mod:`iceb.harness.run`):

- :mod:`~iceb.harness.config`: :class:`EvalConfig`, what defines a run, and its validation;
- :mod:`~iceb.harness.run`: :class:`Run`, the phases of a run, and :func:`evaluate`;
- :mod:`~iceb.harness.plan`: the manifest: chunks, grids, what each edit count holds;
- :mod:`~iceb.harness.dist`: the process group, and the error sharing between its ranks;
- :mod:`~iceb.harness.caches`: the per-image record cache of pre-edit images;
- :mod:`~iceb.harness.files`: edit files, grids and the cleaning of stale files in a run folder;
- :mod:`~iceb.harness.logs`: the ``iceb.harness`` logger and its console handler.

The names below load on first use, so ``import iceb.harness.config`` stays light.
"""
from __future__ import annotations

from typing import Any

_LAZY = {"EvalConfig": "iceb.harness.config", "SMOKE_WARNING": "iceb.harness.config",
         "Run": "iceb.harness.run", "evaluate": "iceb.harness.run", "model_banner": "iceb.harness.run",
         "CRASH_ENV": "iceb.harness.run", "ManifestMismatchError": "iceb.harness.plan"}

__all__ = ["CRASH_ENV", "SMOKE_WARNING", "EvalConfig", "ManifestMismatchError", "Run", "evaluate", "model_banner"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'iceb.harness' has no attribute {name!r}")
