"""The request side of the editor protocol: what one concept edit asks for. Torch-free.

This is the one module of ``editors`` that the benchmark's tasks, data and request files may import
(``design.md``, "Which part may know which"): a task turns its split into :class:`EditRequest` values and
knows nothing else of editors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RequestKind = Literal["update", "erase", "rectify"]
DEFAULT_TEMPLATES: tuple[str, ...] = ("An image of {}", "A photo of {}", "{}")
#: seeds are 0 <= seed < 2**63: what ``torch.Generator.manual_seed`` accepts without wrapping or failing
MAX_SEED = 2**63


class RequestError(ValueError):
    """A request an editor cannot serve, or a malformed request."""


@dataclass(frozen=True)
class EditRequest:
    """One concept edit: ``source`` becomes ``destination`` (``""`` = towards the unconditional prompt).

    ``templates`` are the training prompts, each with one ``{}`` slot for the concept name. ``seed`` seeds
    whatever randomness the editor needs for this request (training images, noise). ``source_id`` and
    ``destination_id`` are the task's class ids, carried for bookkeeping only.

    Raises:
        RequestError: On construction, for an empty source, templates without exactly one ``{}`` slot, an
            unknown ``kind``, an update or rectify without a destination, or a seed that is not an integer
            in ``0 <= seed < 2**63``.
    """

    source: str
    destination: str = ""
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    seed: int = 0
    kind: RequestKind = "update"
    source_id: int | str | None = None
    destination_id: int | str | None = None
    request_id: str | None = None

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
        if self.kind not in ("update", "erase", "rectify"):
            raise RequestError(f"request kind {self.kind!r} is not one of update, erase, rectify")
        if self.kind in ("update", "rectify") and not self.destination.strip():
            raise RequestError(f"request {self.source!r} of kind {self.kind!r} needs a destination")
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


__all__ = ["DEFAULT_TEMPLATES", "MAX_SEED", "EditRequest", "RequestError", "RequestKind"]
