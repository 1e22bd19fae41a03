"""The request side of the editor protocol: what one concept edit asks for. Torch-free.

This is the one module of ``editors`` that the benchmark's tasks, data and request files may import
(``design.md``, "Which part may know which"): a task turns its split into :class:`EditRequest` values and
knows nothing else of editors.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

RequestKind = Literal["update", "erase", "rectify", "debias"]
#: every request kind; ``debias`` balances a concept between several ``destinations`` (e.g. a profession between
#: "a female doctor" and "a male doctor") and is served only by editors with a debiasing mode (EMCID's)
REQUEST_KINDS: tuple[str, ...] = ("update", "erase", "rectify", "debias")
DEFAULT_TEMPLATES: tuple[str, ...] = ("An image of {}", "A photo of {}", "{}")
#: seeds are 0 <= seed < 2**63: what ``torch.Generator.manual_seed`` accepts without wrapping or failing
MAX_SEED = 2**63


class RequestError(ValueError):
    """A request an editor cannot serve, or a malformed request."""


@dataclass(frozen=True)
class EditRequest:
    """One concept edit: ``source`` becomes ``destination`` (``""`` = towards the unconditional prompt).

    A ``debias`` request has no single destination: ``destinations`` (two or more) are what the concept is
    balanced between (EMCID's debiasing mode: a weighted sum of one stage-I target per destination); every other
    kind leaves ``destinations`` empty. An empty ``destinations`` is left out of every hash and file of a
    request, so requests of the other kinds hash as they did before the field existed.

    ``templates`` are the training prompts, each with one ``{}`` slot for the concept name. ``seed`` seeds
    whatever randomness the editor needs for this request (training images, noise). ``source_id`` and
    ``destination_id`` are the task's class ids, carried for bookkeeping only.

    Raises:
        RequestError: On construction, for an empty source, templates without exactly one ``{}`` slot, an
            unknown ``kind``, an update or rectify without a destination, a debias request with fewer than two
            distinct ``destinations`` (or with a ``destination``), ``destinations`` on another kind, or a seed
            that is not an integer in ``0 <= seed < 2**63``.
    """

    source: str
    destination: str = ""
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    seed: int = 0
    kind: RequestKind = "update"
    source_id: int | str | None = None
    destination_id: int | str | None = None
    request_id: str | None = None
    destinations: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source.strip():
            raise RequestError("an edit request needs a non-empty source")
        if isinstance(self.templates, list):
            object.__setattr__(self, "templates", tuple(self.templates))
        if not self.templates:
            raise RequestError(f"request {self.source!r} has no templates")
        for t in self.templates:
            if not isinstance(t, str):
                raise RequestError(f"template {t!r} of request {self.source!r} is not a string")
            if t.count("{}") != 1:
                raise RequestError(f"template {t!r} of request {self.source!r} must hold exactly one '{{}}' slot")
        if self.kind not in REQUEST_KINDS:
            raise RequestError(f"request kind {self.kind!r} is not one of {', '.join(REQUEST_KINDS)}")
        if self.kind in ("update", "rectify") and not self.destination.strip():
            raise RequestError(f"request {self.source!r} of kind {self.kind!r} needs a destination")
        if isinstance(self.destinations, (list, str)):
            dests = [self.destinations] if isinstance(self.destinations, str) else self.destinations
            object.__setattr__(self, "destinations", tuple(dests))
        if self.kind == "debias":
            bad = [d for d in self.destinations if not isinstance(d, str) or not d.strip()]
            if bad:
                raise RequestError(f"debias request {self.source!r}: destination {bad[0]!r} is not a non-empty string")
            if len(set(self.destinations)) < 2 or len(set(self.destinations)) != len(self.destinations):
                raise RequestError(f"debias request {self.source!r} needs at least two distinct destinations to "
                                   f"balance between, got {list(self.destinations)}")
            if self.destination.strip():
                raise RequestError(f"debias request {self.source!r} has destinations {list(self.destinations)}; "
                                   f"leave destination empty (got {self.destination!r})")
        elif self.destinations:
            raise RequestError(f"request {self.source!r} of kind {self.kind!r} takes no destinations (only kind "
                               f"'debias' does), got {list(self.destinations)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            try:
                seed = int(self.seed)
            except (TypeError, ValueError):
                raise RequestError(f"request {self.source!r}: seed {self.seed!r} is not an integer") from None
            if seed != self.seed:
                raise RequestError(f"request {self.source!r}: seed {self.seed!r} is not an integer")
            object.__setattr__(self, "seed", seed)
        if not 0 <= self.seed < MAX_SEED:
            raise RequestError(f"request {self.source!r}: seed {self.seed} is outside 0 <= seed < 2**63 (what "
                               f"torch.Generator.manual_seed takes); choose a smaller seed")

    def source_prompts(self) -> list[str]:
        """The training prompts of the source concept.

        Returns:
            Each template with ``source`` in its slot, in template order.
        """
        return [t.format(self.source) for t in self.templates]

    def destination_prompts(self) -> list[str]:
        """The training prompts of the destination concept, aligned with :meth:`source_prompts`.

        Returns:
            Each template with ``destination`` in its slot; ``""`` (the unconditional prompt) for every
            template when the destination is empty (an erase).
        """
        return [t.format(self.destination) if self.destination else "" for t in self.templates]

    def towards(self, destination: str) -> "EditRequest":
        """A debias request's update towards one of its ``destinations`` (same source, templates, seed, ids).

        EMCID's debiasing mode runs stage I once per destination on these.

        Raises:
            RequestError: This is not a debias request, or ``destination`` is not one of its destinations.
        """
        if self.kind != "debias" or destination not in self.destinations:
            raise RequestError(f"request {self.source!r}: {destination!r} is not a destination of a debias request")
        return EditRequest(self.source, destination, self.templates, self.seed, "update", self.source_id, None,
                           self.request_id)

    def as_dict(self) -> dict:
        """The request's fields as a dict, without ``destinations`` when it is empty (so hashes of requests of the
        other kinds are those from before the field existed)."""
        d = asdict(self)
        if not d["destinations"]:
            del d["destinations"]
        return d


__all__ = ["DEFAULT_TEMPLATES", "MAX_SEED", "REQUEST_KINDS", "EditRequest", "RequestError", "RequestKind"]
