"""The project's own ImageNet split: all 1000 classes, up to 1000 edit requests, a disjoint holdout.

Design (1000 edits from 1000 classes cannot keep a disjoint holdout of classes, so requests edit *names*):

- 250 holdout classes, never edited; every destination is one of them (as in ICEB, so the destination
  prompts are scored too). The 4 classes with a shared primary name ("crane" 134/517, "maillot"
  638/639) are always holdout and never destinations (an edit of "crane" would be ambiguous).
- 750 edit classes in a seeded order. Requests 1-750 edit their primary names (ICEB-style class edits);
  requests 751-1000 edit one alias each of the first edit classes that have an unambiguous alias (a name
  of no other class), towards the same destination as the class's primary-name request. For N <= 750 the
  task is ICEB's protocol on more classes; for N > 750 it adds alias edits, and an alias edited directly is
  no longer counted as an alias (generalisation) prompt. The holdout is the same 250 classes for every N.
- Destinations: ICEB takes the 5 holdout classes nearest by CLIP ViT-L/14 text similarity of "an image
  of {name}" and picks one with ``random.seed(2023); random.choice`` (reset per class, so always the same
  rank). No CLIP weights are available offline, so nearness is WordNet 3.0 hypernym path length between
  the two synsets (shortest path through a common ancestor; ties by class id), from the shipped
  ``wordnet_1k.json``. It is deterministic, needs no model, and like CLIP text similarity it pairs
  semantically related classes (a dog breed with another dog breed); it is *not* CLIP's ranking.
- Aliases: WordNet lemmas after the first, without names shared with another class.
- Prompts: :mod:`iceb.data.prompts` (5 per class, checked). Seeds: ``seed_train`` from ``random.seed(2023)``
  ``random.sample(range(10000), 1000)``; template seeds are the class's first 3 prompt seeds (as ICEB).
"""
from __future__ import annotations

import random
from collections import Counter
from typing import Any

from iceb.data.split_bundle import Concept, EditPair, SplitBundle

VERSION = "1k-v1"
N_HOLDOUT = 250
ORDER_SEED = 1234
DEST_SEED = 2023
TOP_K = 5
TEMPLATES = ("An image of {}", "A photo of {}", "{}")


def hypernym_distance(a: dict[str, int], b: dict[str, int]) -> int:
    common = set(a) & set(b)
    return min(a[x] + b[x] for x in common) if common else 10 ** 6


def build_split1k(wordnet: dict[str, Any] | None = None) -> SplitBundle:
    from iceb.data.imagenet import duplicate_primary_names, imagenet_concepts, wordnet_info
    from iceb.data.prompts import generate_prompts

    wn = wordnet or wordnet_info()
    cs = imagenet_concepts()
    ambiguous = sorted(i for ids in duplicate_primary_names().values() for i in ids)
    name_count = Counter(n.lower() for c in cs for n in c.names)
    prompts = generate_prompts(wn)
    concepts = tuple(
        Concept(c.id, c.name, tuple(a for a in c.aliases if name_count[a.lower()] == 1),
                prompts[c.id], {"wnid": c.wnid, "gloss": c.gloss,
                                "hypernym": wn["synsets"][c.wnid]["hypernym_name"]})
        for c in cs)
    rng = random.Random(ORDER_SEED)
    others = [c.id for c in cs if c.id not in ambiguous]
    rng.shuffle(others)
    n_free = N_HOLDOUT - len(ambiguous)
    holdout = sorted(ambiguous + others[:n_free])
    edit_classes = others[n_free:]
    dest_pool = [h for h in holdout if h not in ambiguous]
    anc = {c.id: {k: int(v) for k, v in wn["synsets"][c.wnid]["ancestors"].items()} for c in cs}
    seed_train = random.Random(2023).sample(range(10000), 1000)
    dest_of = {}
    for s in edit_classes:
        ranked = sorted(dest_pool, key=lambda h: (hypernym_distance(anc[s], anc[h]), h))[:TOP_K]
        dest_of[s] = random.Random(DEST_SEED).choice(ranked)  # reset per class, as ICEB
    k = len(TEMPLATES)
    edits = [EditPair(s, dest_of[s], seed_train[i], tuple(p.seed for p in concepts[s].prompts[:k]))
             for i, s in enumerate(edit_classes)]
    for s in edit_classes:
        if len(edits) == 1000:
            break
        if concepts[s].aliases:
            edits.append(EditPair(s, dest_of[s], seed_train[len(edits)],
                                  tuple(p.seed for p in concepts[s].prompts[:k]), concepts[s].aliases[0]))
    if len(edits) != 1000:
        raise RuntimeError(f"only {len(edits)} edit requests could be made")
    return SplitBundle("iceb-1k", "imagenet", VERSION, concepts, tuple(edits), tuple(holdout), (), TEMPLATES,
                       3, None, {"default_edits": [1, 10, 100, 300, 750, 1000],
                                 "design": "750 class edits + 250 alias edits; 250 holdout classes",
                                 "similarity": "wordnet-hypernym-path"})
