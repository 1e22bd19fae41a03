"""One way to run an editor: the edit mode, the request checks, the rounds, the timing and the NaN refusal.

The harness (``iceb evaluate``), :func:`iceb.editfile.edit_model` and ``iceb edit`` all edit through
:func:`run_editor`, so an editor is run the same way whoever asks:

    from editors import get_editor
    from editors.run import EditMode, make_editor, run_editor

    cls = get_editor("uce")
    editor = make_editor(cls, cls.load_hparams("sd-1.4"))
    result = run_editor(editor, pipe, requests, EditMode.parse("sequential-3"))

**Batch** (``EditMode("batch")``, the default) hands all requests to one :meth:`Editor.edit` call: the
editor's own multi-request algorithm, whatever it is (a joint closed-form solve for UCE and EMCID; chained
rank-one updates for ReFACT, see :mod:`editors.rome`). **Sequential** (``EditMode("sequential", R)``) splits
the requests into ``R`` consecutive chunks and edits each on the model the previous rounds produced
(:func:`edit_in_rounds`); the result is the combined change against the clean pipeline.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch

from editors.base import COST_PHASES, Editor, EditRequest, EditResult, RequestError
from editors.weights import applied
from iceb.utils.cache import cache_tally
from iceb.utils.memory import peak_memory

__all__ = ["EditMode", "NonFiniteEditError", "edit_cost", "edit_in_rounds", "make_editor", "run_editor"]

MODE_KINDS = ("batch", "sequential")


@dataclass(frozen=True)
class EditMode:
    """How the requests of one edit reach the editor: ``batch`` (one call) or ``sequential`` (``rounds`` calls).

    ``str(mode)`` is the name written to result rows and edit files: ``"batch"`` or ``"sequential-<rounds>"``.
    """

    kind: Literal["batch", "sequential"] = "batch"
    rounds: int = 1

    def __post_init__(self) -> None:
        if self.kind not in MODE_KINDS:
            raise ValueError(f"mode must be 'batch' or 'sequential', got {self.kind!r}")
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int):
            raise ValueError(f"rounds must be an integer, got {self.rounds!r}")
        if self.kind == "batch" and self.rounds != 1:
            raise ValueError("rounds needs mode 'sequential' (batch mode edits all requests at once)")
        if self.rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {self.rounds}")

    @classmethod
    def parse(cls, text: str) -> "EditMode":
        """``"batch"``, ``"sequential"`` (one round) or ``"sequential-<rounds>"``, as ``str(mode)`` writes it.

        Args:
            text: The mode's name, e.g. a result row's ``mode`` or a ``--mode`` value.

        Returns:
            The :class:`EditMode`; ``str()`` of it gives ``text`` back (``"sequential"`` reads as one round).

        Raises:
            ValueError: ``text`` names no mode, or its rounds are not a positive integer.
        """
        kind, sep, rounds = str(text).strip().partition("-")
        if kind == "sequential" and sep:
            try:
                return cls("sequential", int(rounds))
            except ValueError:
                raise ValueError(f"mode {text!r}: expected 'sequential-<rounds>' with an integer number of "
                                 f"rounds") from None
        if sep:
            raise ValueError(f"mode must be 'batch', 'sequential' or 'sequential-<rounds>', got {text!r}")
        return cls(kind)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return "batch" if self.kind == "batch" else f"sequential-{self.rounds}"

    def check(self, n_requests: int) -> None:
        """Refuse more rounds than requests (each round edits at least one request)."""
        if self.rounds > n_requests:
            raise RequestError(f"rounds must be between 1 and the number of requests ({n_requests}), got "
                               f"{self.rounds}")


class NonFiniteEditError(FloatingPointError):
    """The editor produced NaN or inf values; ``editor`` names it, ``detail`` says where."""

    def __init__(self, editor: str, detail: str) -> None:
        super().__init__(f"editor {editor} produced non-finite values ({detail})")
        self.editor, self.detail = editor, detail


def make_editor(cls: type, hparams: Any = None, cache_dir: str | Path | None = None,
                progress: bool = True) -> Editor:
    """An editor instance, built through the constructor the :class:`~editors.base.Editor` protocol declares.

    Args:
        cls: The editor class (e.g. from :func:`editors.get_editor`).
        hparams: Its hyperparameters (e.g. from ``cls.load_hparams``); None: the editor's defaults.
        cache_dir: Where the editor caches its statistics; None: the editor's own default.
        progress: Show the editor's progress bars.

    Returns:
        ``cls(hparams, cache_dir=cache_dir, progress=progress)``.
    """
    return cls(hparams, cache_dir=cache_dir, progress=progress)


def edit_in_rounds(editor: Editor, pipe: Any, requests: Sequence[EditRequest], rounds: int) -> EditResult:
    """Sequential editing: ``rounds`` consecutive edits of consecutive chunks, each on the model the
    previous rounds produced. Returns the combined change against the clean pipeline; the pipeline is
    restored afterwards.

    Args:
        editor: The editor instance; its :meth:`~editors.base.Editor.edit` is called once per round.
        pipe: The diffusers pipeline; edited between rounds, restored on return (and on error).
        requests: The requests, split into ``rounds`` consecutive chunks of near-equal size.
        rounds: The number of rounds, between 1 and ``len(requests)``.

    Returns:
        One :class:`~editors.base.EditResult`: every tensor any round changed, at its final value; the
        rounds' timings summed and losses concatenated; ``info`` records the mode and rounds.

    Raises:
        RequestError: ``rounds`` is below 1 or above the number of requests.
    """
    if rounds < 1 or rounds > len(requests):
        raise RequestError(f"rounds must be between 1 and the number of requests ({len(requests)}), got {rounds}")
    bounds = [round(i * len(requests) / rounds) for i in range(rounds + 1)]
    combined: dict[str, torch.Tensor] = {}
    timings: dict[str, float] = {}
    losses: dict[str, list[float]] = {}
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


def run_editor(editor: Editor, pipe: Any, requests: Sequence[EditRequest],
               mode: EditMode | str = EditMode()) -> EditResult:
    """Check the requests, edit in ``mode``, time it; refuse a result with NaN or inf values.

    Args:
        editor: The editor instance (see :func:`make_editor`).
        pipe: The diffusers pipeline to edit.
        requests: The requests, checked first by ``editor.check_requests``.
        mode: An :class:`EditMode`, or its name for :meth:`EditMode.parse`.

    Returns:
        The editor's :class:`~editors.base.EditResult`, with ``timings["edit_seconds"]``: the wall seconds
        of the edit itself (the request checks excluded). The pipeline is left as it was found.

    Raises:
        RequestError: requests the editor cannot serve, or more rounds than requests.
        NonFiniteEditError: (a ``FloatingPointError``) the edit produced non-finite values.
    """
    mode = EditMode.parse(mode) if isinstance(mode, str) else mode
    requests = list(requests)
    name = getattr(editor, "name", "") or type(editor).__name__
    editor.check_requests(requests)
    mode.check(len(requests))
    tally0 = cache_tally()
    with peak_memory() as memory:
        t0 = time.perf_counter()
        try:
            if mode.kind == "sequential":
                result = edit_in_rounds(editor, pipe, requests, mode.rounds)
            else:
                result = editor.edit(pipe, requests)
        except NonFiniteEditError:
            raise
        except FloatingPointError as err:
            raise NonFiniteEditError(name, str(err)) from None
        seconds = time.perf_counter() - t0
    for key, t in result.tensors.items():  # whatever built the result, NaN never leaves here
        if not torch.isfinite(t).all():
            raise NonFiniteEditError(name, f"NaN or inf in {key!r}")
    result.timings = {**result.timings, "edit_seconds": seconds}
    result.info = {**result.info, "cost": edit_cost(editor, result.timings, _tally_since(tally0), memory)}
    return result


def _tally_since(before: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    now = cache_tally()
    out = {k: (h - before.get(k, (0, 0))[0], m - before.get(k, (0, 0))[1]) for k, (h, m) in now.items()}
    return {k: v for k, v in out.items() if v != (0, 0)}


def edit_cost(editor: Any, timings: dict[str, float], cache: dict[str, tuple[int, int]],
              memory: dict[str, Any]) -> dict[str, Any]:
    """One edit's cost split into :data:`~editors.base.COST_PHASES`, each with the cache state it ran in.

    A phase is ``cold`` when it computed everything (no cache read, or only misses), ``warm`` when every read
    hit, ``mixed`` otherwise; ``edit`` (the whole) by the same rule over all its reads, so an edit with no
    cache hit at all is cold. A warm figure is what a repeat costs, never the method's cost: the harness
    labels each measurement's rows with the edit's state.

    Args:
        editor: The editor; its ``cost_phases`` map timer keys to phases, its ``cache_phases`` cache kinds.
        timings: The edit's timings, with ``edit_seconds``.
        cache: ``{cache kind: (hits, misses)}`` during the edit (see :func:`iceb.utils.cache.cache_tally`).
        memory: What :func:`iceb.utils.memory.peak_memory` measured.

    Returns:
        ``{"seconds": {phase: s, "edit": total, "other": unattributed}, "state": {phase: cold|warm|mixed,
        "edit": ...}, "cache": {kind: [hits, misses]}, **memory}``; phases the editor does not time are absent.
    """
    phase_of = dict(getattr(editor, "cost_phases", {}) or {})
    seconds: dict[str, float] = {}
    for key, s in timings.items():
        if phase_of.get(key) in COST_PHASES:
            seconds[phase_of[key]] = seconds.get(phase_of[key], 0.0) + s
    reads: dict[str, list[int]] = {}
    cache_of = dict(getattr(editor, "cache_phases", {}) or {})
    for kind, (h, m) in cache.items():
        if cache_of.get(kind) in COST_PHASES:
            r = reads.setdefault(cache_of[kind], [0, 0])
            r[0] += h
            r[1] += m

    def state(h: int, m: int) -> str:
        return "warm" if h and not m else "mixed" if h else "cold"

    states = {p: state(*reads.get(p, (0, 0))) for p in seconds}
    states["edit"] = state(sum(h for h, _ in reads.values()), sum(m for _, m in reads.values()))
    total = timings["edit_seconds"]
    seconds = {**seconds, "edit": total, "other": max(0.0, total - sum(seconds.values()))}
    return {"seconds": seconds, "state": states, "cache": {k: list(v) for k, v in cache.items()}, **memory}
