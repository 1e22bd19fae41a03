"""The editor contract: requests in, changed tensors out; the pipeline is never left changed.

An editor is a class with a registered ``name``, a frozen :class:`~editors.hparams.Hparams` subclass
``hparams_class``, the request kinds it ``supports``, and one method, :meth:`Editor.edit`, that takes a
diffusers pipeline and a list of :class:`EditRequest` and returns an :class:`EditResult` holding the new
values of exactly the tensors it changed. Batch editing (all requests in one call) is what ``edit`` does;
sequential editing is :func:`editors.run.edit_in_rounds`, an explicit choice of the caller. Callers run an
editor through :func:`editors.run.run_editor`, which checks the requests, applies the edit mode, times
the edit and refuses non-finite results.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Protocol, Sequence, runtime_checkable

import torch

from editors.hparams import HPARAMS_DIR, Hparams, HparamsError
from editors.requests import DEFAULT_TEMPLATES, EditRequest, RequestError, RequestKind
from iceb.utils.timing import Timer  # re-exported: the one timer of every editor

__all__ = ["DEFAULT_TEMPLATES", "COST_PHASES", "BaseEditor", "EditRequest", "EditResult", "Editor", "Judge",
           "RequestError", "RequestKind", "Timer", "editors_supporting"]

Judge = Callable[[Sequence[Any], Sequence[str]], Any]
"""What an editor with a debiasing mode asks to score its trial images: ``judge(images, labels)`` takes uint8
HxWx3 arrays and the texts to choose between (a debias request's ``destinations``) and returns an
``(n_images, n_labels)`` array of probabilities. Editors never build one (they know nothing of the benchmark's
metrics): the caller hands it over with :meth:`BaseEditor.set_judge` (the harness builds it from the task's
``judge``, the metric ``gender-clip`` for ``debias``)."""


def editors_supporting(kind: str) -> list[str]:
    """The registered editors whose ``supports`` holds ``kind`` (imports each editor class: error paths only)."""
    from editors import EDITORS

    out = []
    for name in EDITORS.names():
        try:
            cls = EDITORS.get(name)
        except Exception:  # noqa: BLE001 - a third-party editor that cannot be imported supports nothing here
            continue
        if kind in getattr(cls, "supports", ()):
            out.append(name)
    return out


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
    """Everything the harness, :func:`editors.run.run_editor` and ``iceb edit`` rely on.

    Subclass :class:`BaseEditor` to get all but :meth:`edit` for free."""

    name: ClassVar[str]
    supports: ClassVar[frozenset[str]]
    hparams: Hparams

    def __init__(self, hparams: Hparams | None = None, *, cache_dir: str | Path | None = None,
                 progress: bool = True) -> None: ...

    @classmethod
    def load_hparams(cls, model_family: str = "sd-1.4", path: str | Path | None = None,
                     overrides: Mapping[str, Any] | None = None, preset: str | None = None) -> Hparams:
        """Hparams from an explicit file, else the shipped file for ``model_family``, else the defaults.

        Args:
            model_family: The base model's family, choosing the shipped file.
            path: An hparams YAML to layer over the shipped file.
            overrides: Key/value overrides (the CLI's ``--editor-args``).
            preset: A named shipped file instead of the family's.

        Returns:
            The editor's frozen hparams.

        Raises:
            HparamsError: A bad file, key or value (a ``ValueError``; the message names the source).
        """
        ...

    def check_requests(self, requests: Sequence[EditRequest]) -> None:
        """Raise :class:`RequestError`, before any heavy work, for requests this editor cannot serve.

        Args:
            requests: The requests of one edit.

        Raises:
            RequestError: The first request this editor cannot serve (or none given).
        """
        ...

    def edit(self, pipe: Any, requests: Sequence[EditRequest]) -> EditResult:
        """All ``requests`` in one edit (batch); the pipeline is left unchanged.

        Args:
            pipe: The diffusers pipeline to edit; its weights must hold their original values on return.
            requests: The requests, already checked by :meth:`check_requests`.

        Returns:
            An :class:`EditResult` with the new values of exactly the tensors the edit changes, keyed by
            pipeline tensor name (see :mod:`editors.weights`).

        Raises:
            FloatingPointError: The edit diverged (NaN or inf); :func:`editors.run.run_editor` reports it as
                a :class:`~editors.run.NonFiniteEditError`.
        """
        ...


COST_PHASES = ("precompute", "per_concept", "solve")
"""The parts an edit's cost is split into (:func:`editors.run.edit_cost`): ``precompute``, work done once per
model whatever the requests (layer statistics and their factors); ``per_concept``, work that grows with each
concept (EMCID stage I, ReFACT's and ESD's optimisation, UCE's prompt encoding, MACE's LoRAs); ``solve``, the
step that writes all of them into the weights."""


class BaseEditor:
    """Common plumbing: hparams resolution, request checks, timing.

    Attributes:
        cost_phases: Which :data:`COST_PHASES` each of the editor's :class:`Timer` keys belongs to; keys not
            named are details nested inside a phase (e.g. ESD's ``teacher`` inside its ``train``).
        cache_phases: Which phase each :class:`~iceb.utils.cache.ContentCache` kind the editor reads serves,
            so the cost can say whether that phase ran cold (computed) or warm (read from cache).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    hparams_class: ClassVar[type[Hparams]] = Hparams
    supports: ClassVar[frozenset[str]] = frozenset({"update", "erase", "rectify"})
    cost_phases: ClassVar[Mapping[str, str]] = {}
    cache_phases: ClassVar[Mapping[str, str]] = {"stats": "precompute"}

    def __init__(self, hparams: Hparams | None = None, *, cache_dir: str | Path | None = None,
                 progress: bool = True) -> None:
        self.hparams = hparams if hparams is not None else self.hparams_class()
        if not isinstance(self.hparams, self.hparams_class):
            raise HparamsError(f"{self.name} takes {self.hparams_class.__name__}, got {type(self.hparams).__name__}")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.progress = progress
        self.judge: Judge | None = None

    def set_judge(self, judge: Judge | None) -> "BaseEditor":
        """Give the editor the :data:`Judge` its debiasing mode scores trial images with (None: take it away).

        Only editors that support ``debias`` requests use it; the others keep it and ignore it.

        Returns:
            The editor, so that ``make_editor(...).set_judge(judge)`` reads naturally.
        """
        if judge is not None and not callable(judge):
            raise TypeError(f"{self.name}: a judge must be callable(images, labels), got {type(judge).__name__}")
        self.judge = judge
        return self

    # -- hparams ------------------------------------------------------------------------------------
    @classmethod
    def hparams_path(cls, model_family: str, preset: str | None = None) -> Path | None:
        """The shipped YAML for this editor: ``editors/hparams/<name>/<preset>.yaml`` when a preset is named
        (an unknown preset is an error, never a silent fall-back), else ``<family>.yaml``, else
        ``default.yaml``, else None.

        Args:
            model_family: The base model's family (``sd-1.4``, ``tiny``, ``toy``...).
            preset: A shipped preset name, which wins over the family.

        Returns:
            The YAML file's path, or None when the editor ships no file that applies.

        Raises:
            HparamsError: ``preset`` names no shipped file of this editor.
        """
        folder = HPARAMS_DIR / cls.name
        if preset:
            from editors.hparams import check_preset

            check_preset(cls.name, preset)
            return folder / f"{preset}.yaml"
        for stem in (model_family, "default"):
            if stem and (folder / f"{stem}.yaml").is_file():
                return folder / f"{stem}.yaml"
        return None

    @classmethod
    def load_hparams(cls, model_family: str = "sd-1.4", path: str | Path | None = None,
                     overrides: Mapping[str, Any] | None = None, preset: str | None = None) -> Hparams:
        """Hparams in layers: the defaults, the shipped file (``preset`` or ``model_family``), an explicit file
        ``path``, then ``overrides``; each later layer wins for the keys it names.

        A partial file therefore changes only its own keys (the family's model-specific values stay), and
        every layer is checked (keys, types, finiteness, ranges) with its own source in the message.

        Args:
            model_family: the base model's family (``sd-1.4``, ``tiny``, ``toy``...), choosing the shipped file.
            path: an hparams YAML to layer over the shipped file.
            overrides: key/value overrides (the CLI's ``--editor-args``).
            preset: a named shipped file instead of the family's.

        Returns:
            The frozen hparams.

        Raises:
            HparamsError: A layer is for another editor, or holds an unknown key or a bad value (the
                message names the layer); an unknown ``preset``.
        """
        from editors.hparams import load_yaml, split_tuning

        data: dict[str, Any] = {}
        sources = [f"{cls.name} defaults"]
        for layer in (cls.hparams_path(model_family, preset), Path(path) if path else None):
            if layer is None:
                continue
            layer_data = load_yaml(layer)
            split_tuning(layer_data, str(layer))  # a tuned preset's record: checked, then set aside
            declared = layer_data.pop("editor", None)
            if declared is not None and declared != cls.name and declared not in getattr(cls, "aliases", ()):
                raise HparamsError(f"{layer}: file is for editor {declared!r}, not {cls.name!r}")
            cls.hparams_class.check_values(layer_data, str(layer), editor=cls.name)
            data.update(layer_data)
            sources.append(str(layer))
        if overrides:
            cls.hparams_class.check_values(dict(overrides), "--editor-args", editor=cls.name)
            data.update(overrides)
            sources.append("--editor-args")
        return cls.hparams_class.from_dict(data, source=" + ".join(sources[1:]) or sources[0])

    @classmethod
    def hparams_provenance(cls, model_family: str, path: str | Path | None = None,
                           preset: str | None = None) -> dict[str, Any]:
        """Which shipped preset the hparams came from and whether it is tuned (what the result rows record).

        Args:
            model_family: As for :meth:`load_hparams`.
            path: An explicit hparams file layered over the preset (its tuning record, if any, wins).
            preset: A named preset.

        Returns:
            ``{"preset": stem or None, "tuned": bool, "tuning_hash": str or None}``.
        """
        from editors.hparams import load_yaml, split_tuning, tuning_hash

        shipped = cls.hparams_path(model_family, preset)
        record = None
        for layer in (shipped, Path(path) if path else None):
            if layer is not None:
                record = split_tuning(load_yaml(layer), str(layer)) or record
        return {"preset": shipped.stem if shipped is not None else None, "tuned": record is not None,
                "tuning_hash": tuning_hash(record) if record is not None else None}

    # -- requests -----------------------------------------------------------------------------------
    def check_requests(self, requests: Sequence[EditRequest]) -> None:
        """Reject, before any heavy work, requests this editor cannot serve.

        Subclasses that refuse more (e.g. ReFACT's erase requests) override it.

        Args:
            requests: The requests of one edit.

        Raises:
            RequestError: No requests, a value that is not an :class:`EditRequest`, or a request ``kind``
                outside :attr:`supports`.
        """
        if not requests:
            raise RequestError(f"{self.name}: no edit requests given")
        for i, r in enumerate(requests):
            if not isinstance(r, EditRequest):
                raise RequestError(f"{self.name}: request {i} is a {type(r).__name__}, not an EditRequest")
            if r.kind == "debias" and "debias" not in self.supports:
                others = editors_supporting("debias")
                raise RequestError(
                    f"{self.name} has no debiasing mode, so it cannot serve 'debias' requests (request {i}: "
                    f"{r.source!r}); editors with one: {', '.join(others) or 'none registered'}")
            if r.kind not in self.supports:
                raise RequestError(
                    f"{self.name} does not support {r.kind!r} requests (request {i}: {r.source!r}); "
                    f"it supports: {', '.join(sorted(self.supports))}"
                )

    def edit(self, pipe: Any, requests: Sequence[EditRequest]) -> EditResult:  # pragma: no cover - abstract
        """The editor's algorithm; subclasses implement it (see :meth:`Editor.edit` for the contract).

        Args:
            pipe: The diffusers pipeline to edit; leave its weights as they were found.
            requests: The requests, already checked by :meth:`check_requests`.

        Returns:
            An :class:`EditResult` with the new values of exactly the changed tensors.
        """
        raise NotImplementedError


