"""The editor contract: requests in, changed tensors out; the pipeline is never left changed.

An editor is a class with a registered ``name``, a frozen :class:`~editors.hparams.Hparams` subclass
``hparams_class``, the request kinds it ``supports``, and one method, :meth:`Editor.edit`, that takes a
diffusers pipeline and a list of :class:`EditRequest` and returns an :class:`EditResult` holding the new
values of exactly the tensors it changed. Batch editing (all requests in one call) is what ``edit`` does;
sequential editing is :func:`edit_in_rounds`, an explicit choice of the caller.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, Protocol, Sequence, runtime_checkable

import torch

from editors.hparams import HPARAMS_DIR, Hparams, HparamsError
from editors.requests import DEFAULT_TEMPLATES, EditRequest, RequestError, RequestKind
from editors.weights import applied
from iceb.utils.timing import Timer  # re-exported: the one timer of every editor

__all__ = ["DEFAULT_TEMPLATES", "BaseEditor", "EditRequest", "EditResult", "Editor", "RequestError",
           "RequestKind", "Timer", "edit_in_rounds"]


@dataclass
class EditResult:
    """New values of exactly the changed tensors, keyed by pipeline tensor name, plus bookkeeping."""

    tensors: dict[str, torch.Tensor]
    timings: dict[str, float] = field(default_factory=dict)
    losses: dict[str, list[float]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, t in self.tensors.items():
            if not torch.isfinite(t).all():
                raise FloatingPointError(f"the editor produced non-finite values (NaN or inf) in {name!r}")

    def cpu(self) -> "EditResult":
        return EditResult({k: v.detach().cpu() for k, v in self.tensors.items()}, dict(self.timings),
                          dict(self.losses), dict(self.info))


@runtime_checkable
class Editor(Protocol):
    """What the harness relies on. Subclass :class:`BaseEditor` to get the rest for free."""

    name: ClassVar[str]
    supports: ClassVar[frozenset[str]]
    hparams: Hparams

    def edit(self, pipe: Any, requests: Sequence[EditRequest]) -> EditResult: ...


class BaseEditor:
    """Common plumbing: hparams resolution, request checks, timing."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    hparams_class: ClassVar[type[Hparams]] = Hparams
    supports: ClassVar[frozenset[str]] = frozenset({"update", "erase", "rectify"})

    def __init__(self, hparams: Hparams | None = None, *, cache_dir: str | Path | None = None,
                 progress: bool = True) -> None:
        self.hparams = hparams if hparams is not None else self.hparams_class()
        if not isinstance(self.hparams, self.hparams_class):
            raise HparamsError(f"{self.name} takes {self.hparams_class.__name__}, got {type(self.hparams).__name__}")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.progress = progress

    # -- hparams ------------------------------------------------------------------------------------
    @classmethod
    def hparams_path(cls, model_family: str, preset: str | None = None) -> Path | None:
        """The shipped YAML for this editor and base model, ``editors/hparams/<name>/<preset|family>.yaml``."""
        folder = HPARAMS_DIR / cls.name
        for stem in ([preset] if preset else []) + [model_family, "default"]:
            if stem and (folder / f"{stem}.yaml").is_file():
                return folder / f"{stem}.yaml"
        if preset:
            known = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
            raise HparamsError(f"no preset {preset!r} for editor {cls.name!r}; presets: {', '.join(known) or 'none'}")
        return None

    @classmethod
    def load_hparams(cls, model_family: str = "sd-1.4", path: str | Path | None = None,
                     overrides: Mapping[str, Any] | None = None, preset: str | None = None) -> Hparams:
        """Hparams from an explicit file, else the shipped file for ``model_family``, else the defaults."""
        path = Path(path) if path else cls.hparams_path(model_family, preset)
        if path is None:
            return cls.hparams_class.from_dict(dict(overrides or {}), source=f"{cls.name} defaults")
        from editors.hparams import load_yaml

        data = load_yaml(path)
        declared = data.pop("editor", None)
        if declared is not None and declared != cls.name and declared not in getattr(cls, "aliases", ()):
            raise HparamsError(f"{path}: file is for editor {declared!r}, not {cls.name!r}")
        data.update(overrides or {})
        return cls.hparams_class.from_dict(data, source=str(path))

    # -- requests -----------------------------------------------------------------------------------
    def check_requests(self, requests: Sequence[EditRequest]) -> None:
        """Reject, before any heavy work, requests this editor cannot serve."""
        if not requests:
            raise RequestError(f"{self.name}: no edit requests given")
        for i, r in enumerate(requests):
            if not isinstance(r, EditRequest):
                raise RequestError(f"{self.name}: request {i} is a {type(r).__name__}, not an EditRequest")
            if r.kind not in self.supports:
                raise RequestError(
                    f"{self.name} does not support {r.kind!r} requests (request {i}: {r.source!r}); "
                    f"it supports: {', '.join(sorted(self.supports))}"
                )

    def edit(self, pipe: Any, requests: Sequence[EditRequest]) -> EditResult:  # pragma: no cover - abstract
        raise NotImplementedError


def edit_in_rounds(editor: Editor, pipe: Any, requests: Sequence[EditRequest], rounds: int) -> EditResult:
    """Sequential editing: ``rounds`` consecutive edits of consecutive chunks, each on the model the
    previous rounds produced. Returns the combined change against the clean pipeline; the pipeline is
    restored afterwards."""
    if rounds < 1 or rounds > len(requests):
        raise RequestError(f"rounds must be between 1 and the number of requests ({len(requests)}), got {rounds}")
    bounds = [round(i * len(requests) / rounds) for i in range(rounds + 1)]
    combined: dict[str, torch.Tensor] = {}
    timings: dict[str, float] = {}
    losses: dict[str, list[float]] = {}
    import contextlib

    with contextlib.ExitStack() as stack:
        for r in range(rounds):
            chunk = list(requests[bounds[r]:bounds[r + 1]])
            res = editor.edit(pipe, chunk)
            stack.enter_context(applied(pipe, res.tensors))
            combined.update({k: v.detach().cpu().clone() for k, v in res.tensors.items()})
            for k, v in res.timings.items():
                timings[k] = timings.get(k, 0.0) + v
            for k, v in res.losses.items():
                losses.setdefault(k, []).extend(v)
    return EditResult(combined, timings, losses, {"mode": "sequential", "rounds": rounds})
