"""Neighbour strata of holdout classes: how close a never-edited class is to the classes an instance edits.

The holdout is one pool, but the field asks about the *neighbours* of an edited concept (UnlearnCanvas'
in-domain vs cross-domain retention, HUB's pinpoint-ness). A holdout prompt's ``stratum`` says how near its
class is to the *nearest* edited source class (the classes the instance's requests edit):

ImageNet (WordNet 3.0 hypernym graph, the shipped ``data/imagenet/wordnet_1k.json``; distances as in
:func:`iceb.data.split_1k.hypernym_distance`, the shortest path through a common ancestor):

- ``sibling``: the class shares an immediate hypernym (a synset at distance 1 of both) with an edited
  source, e.g. Chihuahua (151) and Japanese spaniel (152), both under "toy dog";
- ``near``: not a sibling of any edited source, but within path length 4 of one
  (e.g. Chihuahua 151 and Blenheim spaniel 156, under "English toy spaniel" under "toy dog": length 3);
- ``far``: every other class (e.g. Chihuahua 151 and sports car 817; also Chihuahua and golden retriever
  207, whose path through "dog" is 2 + 3 = 5 long: the WordNet dog subtree is deep).

Toy worlds (concept attributes shape and colour; the pattern is ignored):

- ``shares-both``: an edited source has the same shape *and* colour (only in worlds with several
  patterns: the concepts then differ by pattern alone);
- ``shares-shape``: an edited source has the same shape (and none shares both);
- ``shares-colour``: an edited source has the same colour (and none shares the shape);
- ``shares-neither``: no edited source shares shape or colour.

With several edited sources the nearest relation wins, in the order the strata are listed above
(:data:`IMAGENET_STRATA`, :data:`TOY_STRATA`); no other tie-breaking is needed, so strata are deterministic.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Mapping

from iceb.toy.worlds import is_toy_world

#: ImageNet strata, nearest first
IMAGENET_STRATA = ("sibling", "near", "far")
#: toy strata, nearest first
TOY_STRATA = ("shares-both", "shares-shape", "shares-colour", "shares-neither")
#: every stratum name, nearest first within each world
ALL_STRATA = IMAGENET_STRATA + TOY_STRATA
#: the largest hypernym path length of a ``near`` class
NEAR_MAX = 4


@functools.lru_cache(maxsize=1)
def _ancestors() -> dict[int, dict[str, int]]:
    """Per ImageNet class id: its WordNet ancestors (synset id -> hypernym distance, itself at 0)."""
    from iceb.data.imagenet import imagenet_concepts, wordnet_info

    wn = wordnet_info()["synsets"]
    return {c.id: {k: int(v) for k, v in wn[c.wnid]["ancestors"].items()} for c in imagenet_concepts()}


def imagenet_relation(a: int, b: int) -> str:
    """The stratum of class ``a`` with respect to the single class ``b`` (ImageNet class ids)."""
    anc = _ancestors()
    try:
        x, y = anc[int(a)], anc[int(b)]
    except KeyError as e:
        raise ValueError(f"ImageNet class id {e.args[0]!r} is not one of the 1000 classes") from None
    common = set(x) & set(y)
    if any(x[s] == 1 and y[s] == 1 for s in common):
        return "sibling"
    if common and min(x[s] + y[s] for s in common) <= NEAR_MAX:
        return "near"
    return "far"


def imagenet_stratum(class_id: int, edited_source_ids: Iterable[int]) -> str:
    """``sibling``, ``near`` or ``far``: class ``class_id`` against its nearest edited source class."""
    rel = {imagenet_relation(class_id, s) for s in edited_source_ids}
    return next((s for s in IMAGENET_STRATA if s in rel), "far")


def _attrs(concept: Any) -> tuple[str, str]:
    """(shape, colour) of a :class:`~iceb.toy.world.ToyConcept` or a toy split's ``Concept`` (``info``)."""
    info: Mapping[str, Any] = getattr(concept, "info", None) or {}
    shape = getattr(concept, "shape", None) or info.get("shape")
    colour = getattr(concept, "colour", None) or info.get("colour")
    if not shape or not colour:
        raise ValueError(f"toy concept {getattr(concept, 'id', concept)!r} has no shape/colour attributes")
    return str(shape), str(colour)


def _has_attrs(concept: Any) -> bool:
    try:
        _attrs(concept)
    except ValueError:
        return False
    return True


def toy_relation(concept: Any, other: Any) -> str:
    """The stratum of toy ``concept`` with respect to the single concept ``other``."""
    (s1, c1), (s2, c2) = _attrs(concept), _attrs(other)
    if s1 == s2 and c1 == c2:
        return "shares-both"
    if s1 == s2:
        return "shares-shape"
    if c1 == c2:
        return "shares-colour"
    return "shares-neither"


def toy_stratum(concept: Any, edited_concepts: Iterable[Any]) -> str:
    """``shares-both``, ``shares-shape``, ``shares-colour`` or ``shares-neither`` against the edited sources."""
    rel = {toy_relation(concept, e) for e in edited_concepts}
    return next((s for s in TOY_STRATA if s in rel), "shares-neither")


def stratifier(bundle: Any, edited_source_ids: Iterable[int]) -> Callable[[int], str]:
    """``class id -> stratum`` for a :class:`~iceb.data.split_bundle.SplitBundle`'s world (one path for all).

    ImageNet bundles use the class ids (ImageNet indices); toy bundles the concepts' shape and colour.
    With no edited sources, or in a toy bundle whose concepts carry no shape/colour (a hand-made one), a
    class's stratum is empty (``""``).
    """
    sources = sorted({int(s) for s in edited_source_ids})
    if not sources:
        return lambda cid: ""
    if bundle.world == "imagenet":
        return lambda cid: imagenet_stratum(cid, sources)
    if is_toy_world(bundle.world):  # the toy worlds: strata by shared shape and colour
        edited = [bundle.concept(s) for s in sources]
        if not all(_has_attrs(c) for c in edited):
            return lambda cid: ""  # a hand-made toy bundle without attributes has no strata
        return lambda cid: toy_stratum(bundle.concept(cid), edited) if _has_attrs(bundle.concept(cid)) else ""
    raise ValueError(f"no neighbour strata for world {bundle.world!r}")


def strata_order(world: str) -> tuple[str, ...]:
    """The strata of ``world``, nearest first."""
    return TOY_STRATA if is_toy_world(world) else IMAGENET_STRATA
