"""The toy world's split bundle (``data/toy/split.json``) and caption corpus (``data/toy/captions.txt``).

The bundle is what the ``ace`` and ``rectification`` tasks read for world ``toy``:

- concepts: every trained concept with its correct aliases and its free-form prompts (with seeds);
  ``info`` keeps the attributes, the prompts' contexts, the misunderstood and untrained aliases;
- holdout: a fixed set of concepts that no edit touches (neither source nor destination);
- edits: an ordered list of source -> destination pairs over the other concepts, each source used once,
  destinations from a pool disjoint from the sources (so no edit's destination is another edit's source);
- rectifications: each misunderstood alias -> its concept's primary name.
"""
from __future__ import annotations

import random
from pathlib import Path

from editors.requests import DEFAULT_TEMPLATES
from iceb.data.split_bundle import Concept, EditPair, PromptSeed, Rectification, SplitBundle
from iceb.toy.world import ToyWorld

SPLIT_VERSION = "toy-1"
DEFAULT_EDITS = (1, 2, 4, 8, 16, 32)


def build_split(world: ToyWorld, n_holdout: int | None = None, seed: int = 0) -> SplitBundle:
    """The bundle for ``world``: a quarter of the concepts held out, half of the rest are edit sources."""
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
    max_edits = len(edits)
    return SplitBundle(
        name="toy", world="toy", version=SPLIT_VERSION, concepts=tuple(concepts), edits=tuple(edits),
        holdout=tuple(holdout), rectifications=tuple(rects), templates=DEFAULT_TEMPLATES,
        holdout_prompts_per_class=3, rectification_max=None,
        info={"default_edits": [k for k in DEFAULT_EDITS if k <= max_edits], "max_edits": max_edits,
              "world_config": world.config, "destination_pool": sorted(dest_pool),
              "note": "toy world: made-up names; concept ids are the toy classifier's output indices"})


def write_split_files(out: Path | None = None, seed: int = 0, n_captions: int = 4000) -> list[Path]:
    """Write split.json and captions.txt for the shipped world (seed 0 by default)."""
    from iceb.utils.io import write_text
    from iceb.utils.paths import DATA_DIR

    out = out or DATA_DIR / "toy"
    world = ToyWorld(seed=seed)
    build_split(world).save(out / "split.json")
    write_text(out / "captions.txt", "\n".join(world.caption_corpus(n_captions, seed=seed + 7)) + "\n")
    return [out / "split.json", out / "captions.txt"]
