"""The split bundle: one normalised, world-agnostic description of a benchmark split.

Every world (EMCID's official ImageNet split, the project's 1000-class ImageNet split, the toy world)
is turned into a :class:`SplitBundle`; the ``ace`` and ``rectification`` tasks read only bundles, so one
code path serves every world. Bundles are plain JSON (``save``/``load``) with a version and a checksum.

A bundle may also carry a **dev split** (``dev_edits``, ``dev_holdout``, ``dev_rectifications``): requests
and holdout concepts reserved for tuning editors (``iceb tune``), disjoint from every test request's source
and destination and from every test holdout concept (:meth:`SplitBundle.check_dev`). :meth:`SplitBundle.dev`
is the same bundle with the dev lists in place of the test ones, so the tasks serve dev instances through
their one code path. A bundle without a dev split serialises exactly as before the fields existed (its
checksum is unchanged).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
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
    dev_edits: tuple[EditPair, ...] = ()
    dev_holdout: tuple[int, ...] = ()
    dev_rectifications: tuple[Rectification, ...] = ()

    @property
    def has_dev(self) -> bool:
        return bool(self.dev_edits or self.dev_rectifications)

    def dev(self) -> "SplitBundle":
        """The dev split as a bundle of its own (name ``<name>/dev``): the dev requests and holdout in place of
        the test ones, the same concepts and templates.

        Raises:
            SplitError: The bundle has no dev split.
        """
        if not self.has_dev:
            raise SplitError(f"split {self.name!r} has no dev split (no requests are reserved for tuning)")
        info = dict(self.info)
        for key, n in (("default_edits", len(self.dev_edits)), ("rectification_default_edits",
                                                                 len(self.dev_rectifications))):
            if key in info:  # the test sweep cut to what the dev split serves, its largest count always in
                info[key] = sorted({k for k in info[key] if k <= n} | {n})
        if "max_edits" in info:
            info["max_edits"] = len(self.dev_edits)
        return replace(self, name=f"{self.name}/dev", edits=self.dev_edits, holdout=self.dev_holdout,
                       rectifications=self.dev_rectifications, info=info, dev_edits=(), dev_holdout=(),
                       dev_rectifications=())

    def dev_concepts(self) -> set[int]:
        """Every concept the dev split names (sources, destinations, holdout, rectified classes)."""
        return ({e.source_id for e in self.dev_edits} | {e.dest_id for e in self.dev_edits} | set(self.dev_holdout)
                | {r.class_id for r in self.dev_rectifications})

    def test_concepts(self) -> set[int]:
        """Every concept the test split names."""
        return ({e.source_id for e in self.edits} | {e.dest_id for e in self.edits} | set(self.holdout)
                | {r.class_id for r in self.rectifications})

    def check_dev(self) -> None:
        """Refuse a dev split that shares a concept with the test split (tuning must never read a test concept).

        Raises:
            SplitError: Naming the shared concepts.
        """
        shared = self.dev_concepts() & self.test_concepts()
        if shared:
            raise SplitError(f"split {self.name!r}: the dev split shares concepts {sorted(shared)} with the test split")

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
        for key in ("dev_edits", "dev_holdout", "dev_rectifications"):
            if not d[key]:  # a bundle without a dev split keeps its format and checksum
                del d[key]
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
        def edits(rows: list[dict[str, Any]]) -> tuple[EditPair, ...]:
            return tuple(EditPair(e["source_id"], e["dest_id"], e["seed_train"], tuple(e["template_seeds"]),
                                  e.get("source_name")) for e in rows)

        def rects(rows: list[dict[str, Any]]) -> tuple[Rectification, ...]:
            return tuple(Rectification(r["class_id"], r["source"], r["destination"], r["seed_train"],
                                       tuple(r["template_seeds"])) for r in rows)

        bundle = cls(d["name"], d["world"], d["version"], concepts, edits(d["edits"]), tuple(d["holdout"]),
                     rects(d.get("rectifications", [])), tuple(d.get("templates", DEFAULT_TEMPLATES)),
                     d.get("holdout_prompts_per_class", 3), d.get("rectification_max"), d.get("info", {}),
                     edits(d.get("dev_edits", [])), tuple(d.get("dev_holdout", [])),
                     rects(d.get("dev_rectifications", [])))
        bundle.check_dev()
        return bundle

    @classmethod
    def load(cls, path: str | Path) -> "SplitBundle":
        path = Path(path)
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise SplitError(f"cannot read split bundle {path}: {err}") from err
