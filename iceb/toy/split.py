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


def write_split_files(out: Path | None = None, seed: int = 0, n_captions: int = 4000) -> list[Path]:
    """Write split.json and captions.txt for the shipped world (seed 0 by default)."""
    from iceb.utils.io import write_text
    from iceb.utils.paths import DATA_DIR

    out = out or DATA_DIR / "toy"
    world = ToyWorld(seed=seed)
    build_split(world).save(out / "split.json")
    write_text(out / "captions.txt", "\n".join(world.caption_corpus(n_captions, seed=seed + 7)) + "\n")
    return [out / "split.json", out / "captions.txt"]
