"""ICEB: the ImageNet Concept Editing Benchmark for text-to-image diffusion models.

The Python API, importable from here (``from iceb import load_model, edit_model, evaluate``). Names are
imported on first use, so ``import iceb`` stays light (no torch) and the CLI starts fast:

- run the benchmark: :func:`evaluate` with an :class:`EvalConfig`;
- load a model: :func:`load_model` (a hub id, a diffusers folder, ``"toy"`` or ``"tiny"``);
- edit, save, load and apply: :func:`edit_model`, :func:`save_edit`, :func:`load_edit`, :func:`apply_edit`,
  :func:`restore_edit`, :func:`edited` (apply, then restore), :func:`merge_edits`, :func:`save_applied`
  (a full edited diffusers folder);
- requests and renders: :class:`EditRequest`, :func:`read_requests`, :func:`generate`, :func:`render_prompts`;
- the registries: :func:`get_task`, :func:`get_metric`;
- per-sample logs of a ``--log-samples`` run: :func:`read_samples` (a pandas DataFrame).
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> the module that defines it (imported on first access)
_API: dict[str, str] = {
    "EvalConfig": "iceb.harness",
    "evaluate": "iceb.harness",
    "load_model": "iceb.models",
    "EditRequest": "editors.requests",
    "read_requests": "iceb.data.request_files",
    "edit_model": "iceb.editfile",
    "save_edit": "iceb.editfile",
    "load_edit": "iceb.editfile",
    "apply_edit": "iceb.editfile",
    "restore_edit": "iceb.editfile",
    "edited": "iceb.editfile",
    "merge_edits": "iceb.editfile",
    "save_applied": "iceb.editfile",
    "generate": "iceb.generation",
    "render_prompts": "iceb.rendering",
    "get_task": "iceb.tasks",
    "get_metric": "iceb.metrics",
    "read_samples": "iceb.leaderboard.samples",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'iceb' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
