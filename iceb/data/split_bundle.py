"""The split bundle: one normalised, world-agnostic description of a benchmark split.

Every world (EMCID's official ImageNet split, the project's 1000-class ImageNet split, the toy world)
is turned into a :class:`SplitBundle`; the ``ace`` and ``rectification`` tasks read only bundles, so one
code path serves every world. Bundles are plain JSON (``save``/``load``) with a version and a checksum.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from editors.requests import DEFAULT_TEMPLATES

BUNDLE_FORMAT = 1


class SplitError(ValueError):
    pass


@dataclass(frozen=True)
class PromptSeed:
    """A free-form prompt with one ``{}`` slot for the concept's name, and its generation seed."""

    template: str
    seed: int


@dataclass(frozen=True)
class Concept:
    """A class: its id (ImageNet index or toy id), primary name, aliases and free-form prompts."""

    id: int
    name: str
    aliases: tuple[str, ...] = ()
    prompts: tuple[PromptSeed, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)  # wnid, gloss, hypernym, toy attributes, ...


@dataclass(frozen=True)
class EditPair:
    """One arbitrary-editing request in the split's official order."""

    source_id: int
    dest_id: int
    seed_train: int
    template_seeds: tuple[int, ...]  # one per training template (ICEB: the class's first prompt seeds)
    source_name: str | None = None  # the name to edit when not the class's primary name (an alias edit)


@dataclass(frozen=True)
class Rectification:
    """A misunderstood name of a class, to be mapped to the class's best-understood name."""

    class_id: int
    source: str  # the wrong alias
    destination: str  # the best name
    seed_train: int
    template_seeds: tuple[int, ...]


@dataclass(frozen=True)
class SplitBundle:
    name: str
    world: str  # "imagenet" or "toy": which classifier scores its images
    version: str
    concepts: tuple[Concept, ...]
    edits: tuple[EditPair, ...]
    holdout: tuple[int, ...]
    rectifications: tuple[Rectification, ...] = ()
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    holdout_prompts_per_class: int = 3  # ICEB: the first 3 of each holdout class's prompts
    rectification_max: int | None = None  # ICEB's script edits the first 140 of 143
    info: dict[str, Any] = field(default_factory=dict)

    def concept(self, cid: int) -> Concept:
        try:
            return self._by_id()[cid]
        except KeyError:
            raise SplitError(f"split {self.name!r} has no class {cid}") from None

    def _by_id(self) -> dict[int, Concept]:
        cache = self.__dict__.get("_by_id_cache")
        if cache is None:
            cache = {c.id: c for c in self.concepts}
            object.__setattr__(self, "_by_id_cache", cache)
        return cache

    # -- serialisation --------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["format"] = BUNDLE_FORMAT
        return d

    def checksum(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()

    def save(self, path: str | Path) -> str:
        from iceb.utils.io import write_text

        write_text(path, json.dumps(self.to_json(), sort_keys=True, indent=None, separators=(",", ":")) + "\n")
        return self.checksum()

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "SplitBundle":
        if d.get("format") != BUNDLE_FORMAT:
            raise SplitError(f"split bundle format {d.get('format')!r} is not {BUNDLE_FORMAT}")
        concepts = tuple(
            Concept(c["id"], c["name"], tuple(c["aliases"]), tuple(PromptSeed(**p) for p in c["prompts"]),
                    c.get("info", {}))
            for c in d["concepts"])
        edits = tuple(EditPair(e["source_id"], e["dest_id"], e["seed_train"], tuple(e["template_seeds"]),
                               e.get("source_name"))
                      for e in d["edits"])
        rects = tuple(Rectification(r["class_id"], r["source"], r["destination"], r["seed_train"],
                                    tuple(r["template_seeds"])) for r in d.get("rectifications", []))
        return cls(d["name"], d["world"], d["version"], concepts, edits, tuple(d["holdout"]), rects,
                   tuple(d.get("templates", DEFAULT_TEMPLATES)), d.get("holdout_prompts_per_class", 3),
                   d.get("rectification_max"), d.get("info", {}))

    @classmethod
    def load(cls, path: str | Path) -> "SplitBundle":
        path = Path(path)
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise SplitError(f"cannot read split bundle {path}: {err}") from err
