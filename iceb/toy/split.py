"""The toy world's split bundle (``data/toy/split.json``) and caption corpus (``data/toy/captions.txt``).

The bundle is what the ``ace`` and ``rectification`` tasks read for world ``toy``:

- concepts: every trained concept with its correct aliases and its free-form prompts (with seeds);
  ``info`` keeps the attributes, the prompts' contexts, the misunderstood and untrained aliases;
- holdout: a fixed set of concepts that no edit touches (neither source nor destination);
- edits: an ordered list of source -> destination pairs over the other concepts, each source used once,
  destinations from a pool disjoint from the sources (so no edit's destination is another edit's source);
- rectifications: each misunderstood alias -> its concept's primary name;
- a dev split for tuning (``iceb tune``), disjoint from all of the above.

How the dev split is carved (version ``toy-2``): the draw of ``toy-1`` is made unchanged (the same generator
calls in the same order), then only its first three quarters of edits stay test edits (24 of the 64-concept
world's 32), so every test request, seed and holdout concept of ``toy-1`` up to 24 edits is unchanged and
earlier runs' images still serve. The sources of the dropped edits and the destination-pool concepts that no
test edit uses become dev concepts: three quarters of those sources are dev sources (keeping their drawn
seeds), half of the freed destinations (at least one) are dev destinations, and the rest form the dev
holdout. A rectification whose concept is a dev concept moves to the dev list. On the shipped world: 24 test
edits / 16 holdout / 24 rectifications; dev 6 edits / 5 holdout / 8 rectifications (13 concepts).
"""
from __future__ import annotations

import random
from pathlib import Path

from editors.requests import DEFAULT_TEMPLATES
from iceb.data.split_bundle import Concept, EditPair, PromptSeed, Rectification, SplitBundle
from iceb.toy.world import ToyWorld

SPLIT_VERSION = "toy-2"
DEFAULT_EDITS = (1, 2, 4, 8, 16, 24, 32)


def build_split(world: ToyWorld, n_holdout: int | None = None, seed: int = 0, dev: bool = True) -> SplitBundle:
    """The bundle for ``world``: a quarter of the concepts held out, two thirds of the rest are edit sources,
    and (``dev``) a dev split carved from the last quarter of the edits (see the module docstring).

    Args:
        world: The toy world.
        n_holdout: Test holdout concepts (default: a quarter of the world).
        seed: The split's seed.
        dev: Reserve a dev split (where the world is large enough to leave a dev source and destination); False
            gives the ``toy-1`` draw (every source a test edit).

    Returns:
        The bundle.
    """
    n = len(world)
    n_holdout = n // 4 if n_holdout is None else n_holdout
    rng = random.Random(f"toy-split|{world.seed}|{seed}")
    ids = [c.id for c in world.concepts]
    rng.shuffle(ids)
    holdout = sorted(ids[:n_holdout])
    rest = ids[n_holdout:]
    n_sources = (2 * len(rest)) // 3
    sources, dest_pool = rest[:n_sources], rest[n_sources:]
    if not sources or not dest_pool:
        raise ValueError(f"a world of {n} concepts is too small for a split")

    def seeds() -> tuple[int, tuple[int, ...]]:
        return rng.randrange(2**31), tuple(rng.randrange(2**31) for _ in DEFAULT_TEMPLATES)

    edits = []
    for s in sources:
        d = rng.choice(dest_pool)
        st, ts = seeds()
        edits.append(EditPair(s, d, st, ts))
    concepts, rects = _concepts_and_rectifications(world, seeds)
    dev_edits: list[EditPair] = []
    dev_holdout: list[int] = []
    dev_rects: list[Rectification] = []
    if dev:
        n_test = (3 * len(edits)) // 4
        freed_sources = [e.source_id for e in edits[n_test:]]
        used = {e.dest_id for e in edits[:n_test]}
        freed_dests = [d for d in sorted(dest_pool) if d not in used]
        n_dev_src = (3 * len(freed_sources)) // 4
        n_dev_dst = max(1, len(freed_dests) // 2)
        dev = bool(n_dev_src and freed_dests)  # a world too small for one leaves every request to the test split
    if dev:
        dev_dests, dev_rng = freed_dests[:n_dev_dst], random.Random(f"toy-dev|{world.seed}|{seed}")
        dev_edits = [EditPair(e.source_id, dev_rng.choice(dev_dests), e.seed_train, e.template_seeds)
                     for e in edits[n_test:n_test + n_dev_src]]
        dev_holdout = sorted(freed_sources[n_dev_src:] + freed_dests[n_dev_dst:])
        edits = edits[:n_test]
        dev_ids = set(freed_sources) | set(freed_dests)
        dev_rects = [r for r in rects if r.class_id in dev_ids]
        rects = [r for r in rects if r.class_id not in dev_ids]
    max_edits = len(edits)
    return SplitBundle(
        name="toy", world="toy", version=SPLIT_VERSION, concepts=tuple(concepts), edits=tuple(edits),
        holdout=tuple(holdout), rectifications=tuple(rects), templates=DEFAULT_TEMPLATES,
        holdout_prompts_per_class=3, rectification_max=None,
        info={"default_edits": [k for k in DEFAULT_EDITS if k <= max_edits], "max_edits": max_edits,
              "world_config": world.config, "destination_pool": sorted({e.dest_id for e in edits}) if dev else sorted(dest_pool),
              "note": "toy world: made-up names; concept ids are the toy classifier's output indices"},
        dev_edits=tuple(dev_edits), dev_holdout=tuple(dev_holdout), dev_rectifications=tuple(dev_rects))


def _concepts_and_rectifications(world: ToyWorld, seeds) -> tuple[list[Concept], list[Rectification]]:
    """Every concept with its info, and one rectification per misunderstood alias (its seeds from ``seeds``)."""
    concepts = []
    rects = []
    for c in world.concepts:
        concepts.append(Concept(
            c.id, c.name, c.aliases, tuple(PromptSeed(p.template, p.seed) for p in c.prompts),
            {"shape": c.shape, "colour": c.colour, "pattern": c.pattern,
             "prompt_contexts": [[p.context.position, p.context.size, p.context.background] for p in c.prompts],
             "misunderstood_aliases": list(c.misunderstood), "misunderstood_as": c.misunderstood_as,
             "untrained_aliases": list(c.untrained)}))
        for a in c.misunderstood:
            st, ts = seeds()
            rects.append(Rectification(c.id, a, c.name, st, ts))
    return concepts, rects


SCALED_SPLIT_VERSION = "toy-1k-1"
SCALED_DEFAULT_EDITS = (1, 10, 100, 300, 1000, 2000)


def build_scaled_split(world: ToyWorld, name: str = "toy-1k", n_edits: int = 1000, n_holdout: int = 256,
                       n_dev_edits: int = 24, n_dev_holdout: int = 16, n_dev_dests: int = 8,
                       seed: int = 0) -> SplitBundle:
    """The bundle of a world built for 1 ... 1,000 edits (issue #18): fixed counts instead of fractions.

    The concepts are shuffled once and cut, in this order, into the test holdout, the test sources, the dev
    sources, the dev holdout, the dev destinations, and the test destinations (the rest, which must be
    non-empty). Each source is edited once, towards a destination drawn from its own split's pool, so no edit's
    destination is any edit's source and no dev concept appears in a test request. Rectifications: one per
    misunderstood alias; those of dev concepts form the dev list.

    Args:
        world: The toy world (e.g. 16 shapes x 16 colours x 6 patterns = 1,536 concepts).
        name: The bundle's name and world.
        n_edits: Test edit requests (the sweep's largest N).
        n_holdout: Test holdout concepts (never a source or destination).
        n_dev_edits, n_dev_holdout, n_dev_dests: The dev split's sizes (for ``iceb tune``).
        seed: The split's seed.

    Returns:
        The bundle.

    Raises:
        ValueError: When the world has too few concepts for these counts.
    """
    n = len(world)
    need = n_holdout + n_edits + n_dev_edits + n_dev_holdout + n_dev_dests
    if n_edits < 1 or n_holdout < 1 or need >= n:
        raise ValueError(f"a world of {n} concepts cannot hold {n_edits} edits, {n_holdout} holdout concepts and "
                         f"a dev split of {n_dev_edits + n_dev_holdout + n_dev_dests} concepts with at least one "
                         f"destination left (needs more than {need})")
    rng = random.Random(f"toy-scaled-split|{world.seed}|{seed}")
    ids = [c.id for c in world.concepts]
    rng.shuffle(ids)
    cuts = [n_holdout, n_edits, n_dev_edits, n_dev_holdout, n_dev_dests]
    parts, at = [], 0
    for k in cuts:
        parts.append(ids[at:at + k])
        at += k
    holdout, sources, dev_sources, dev_holdout, dev_dests = parts
    dests = sorted(ids[at:])

    def seeds() -> tuple[int, tuple[int, ...]]:
        return rng.randrange(2**31), tuple(rng.randrange(2**31) for _ in DEFAULT_TEMPLATES)

    def pairs(srcs: list[int], pool: list[int]) -> list[EditPair]:
        out = []
        for s in srcs:
            d = rng.choice(pool)
            st, ts = seeds()
            out.append(EditPair(s, d, st, ts))
        return out

    edits, dev_edits = pairs(sources, dests), pairs(dev_sources, sorted(dev_dests))
    concepts, rects = _concepts_and_rectifications(world, seeds)
    dev_ids = set(dev_sources) | set(dev_holdout) | set(dev_dests)
    n_rect = sum(1 for r in rects if r.class_id not in dev_ids)
    return SplitBundle(
        name=name, world=name, version=SCALED_SPLIT_VERSION, concepts=tuple(concepts), edits=tuple(edits),
        holdout=tuple(sorted(holdout)), rectifications=tuple(r for r in rects if r.class_id not in dev_ids),
        templates=DEFAULT_TEMPLATES, holdout_prompts_per_class=3, rectification_max=None,
        info={"default_edits": [k for k in SCALED_DEFAULT_EDITS if k <= n_edits], "max_edits": n_edits,
              "rectification_default_edits": [k for k in SCALED_DEFAULT_EDITS if k < n_rect] + [n_rect],
              "world_config": world.config, "destination_pool": dests,
              "note": f"{name}: made-up names; concept ids are the world classifier's output indices"},
        dev_edits=tuple(dev_edits), dev_holdout=tuple(sorted(dev_holdout)),
        dev_rectifications=tuple(r for r in rects if r.class_id in dev_ids))


def write_split_files(out: Path | None = None, seed: int = 0, n_captions: int = 4000) -> list[Path]:
    """Write split.json and captions.txt for the shipped world (seed 0 by default)."""
    from iceb.utils.io import write_text
    from iceb.utils.paths import DATA_DIR

    out = out or DATA_DIR / "toy"
    world = ToyWorld(seed=seed)
    build_split(world).save(out / "split.json")
    write_text(out / "captions.txt", "\n".join(world.caption_corpus(n_captions, seed=seed + 7)) + "\n")
    return [out / "split.json", out / "captions.txt"]
