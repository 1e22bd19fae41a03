"""Which names of a class does a model misunderstand? Score every name, then derive rectification
requests with ICEB's rule (``ImageNetMendRequestDataset``, checked against ``rectification_val.csv``):

1. score: for every name of every class, render ``images_per_name`` images (ICEB: 8) and record the mean
   and std of the classifier's probability of the true class (``imgnet_prompts_cls.json`` layout:
   ``{class id: {name: {mean, std, number}}}``);
2. a "wrong name" has mean < 0.1; a class whose best name has mean < 0.5 is "unknown" and dropped
   (``no_extra_knowledge``); each remaining wrong name -> the class's best name;
3. keep only classes of the pool (the split's classes), in score-file order;
4. drop conflicts: a source mapped to two destinations, and a request whose *source* is another
   request's destination (EMCID drops "panda" -> "red panda" because "panda" is the giant panda's best name).

Fed EMCID's score file with the 666-class pool this gives EMCID's 143 requests from 102 classes, in order.
EMCID's generation prompt for scoring is not released; :func:`score_names` uses the first ICEB training
template "An image of {}" with seeds ``0..images_per_name-1`` shared by every name (same noise for every name
of a class, so names are compared fairly).
"""
from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

WRONG_BELOW = 0.1
KNOWN_AT_LEAST = 0.5
IMAGES_PER_NAME = 8
SCORE_TEMPLATE = "An image of {}"


@dataclass(frozen=True)
class DerivedRectification:
    class_id: int
    source: str  # the wrong name
    destination: str  # the class's best name
    source_score: float
    destination_score: float


def _mean(v: Any) -> float:
    return float(v["mean"] if isinstance(v, Mapping) else v)


def derive_rectifications(scores: Mapping[Any, Mapping[str, Any]], pool: Iterable[int] | None = None,
                          wrong_below: float = WRONG_BELOW, known_at_least: float = KNOWN_AT_LEAST
                          ) -> list[DerivedRectification]:
    """ICEB's rule over ``scores`` ({class id: {name: {"mean": ...} or mean}}), in score-file order."""
    pool_set = None if pool is None else {int(c) for c in pool}
    reqs: list[DerivedRectification] = []
    for cid, names in scores.items():
        cid = int(cid)
        if not names:
            continue
        best, best_score = max(((n, _mean(v)) for n, v in names.items()), key=lambda kv: kv[1])
        if best_score < known_at_least or (pool_set is not None and cid not in pool_set):
            continue
        for name, v in names.items():
            if _mean(v) < wrong_below:
                reqs.append(DerivedRectification(cid, name, best, _mean(v), best_score))
    dests_of: dict[str, set[str]] = defaultdict(set)
    for r in reqs:
        dests_of[r.source].add(r.destination)
    destinations = {r.destination for r in reqs}
    return [r for r in reqs if len(dests_of[r.source]) == 1 and r.source not in destinations]


def with_rectifications(bundle, scores: str | Path | Mapping | None = None, data_dir: str | Path | None = None,
                        wrong_below: float = WRONG_BELOW, known_at_least: float = KNOWN_AT_LEAST):
    """``bundle`` with its rectifications derived from a score file over its own classes.

    ``scores``: a mapping, a path to a score JSON, or None for EMCID's ``imgnet_prompts_cls.json``
    (downloaded, or from ``$ICEB_OFFICIAL_DATA``). Seeds: the class's first prompt seeds for the templates,
    and a hash-derived ``seed_train`` (:func:`iceb.data.official.fallback_seed`).
    """
    from iceb.data.official import fallback_seed, load_class_scores
    from iceb.data.split_bundle import Rectification

    if scores is None:
        table = load_class_scores(data_dir)
    elif isinstance(scores, Mapping):
        table = scores
    else:
        table = json.loads(Path(scores).read_text())
    derived = derive_rectifications(table, [c.id for c in bundle.concepts], wrong_below, known_at_least)
    k = len(bundle.templates)
    rects = []
    for r in derived:
        c = bundle.concept(r.class_id)
        rects.append(Rectification(r.class_id, r.source, r.destination, fallback_seed("rectification", r.source,
                                                                                       r.class_id),
                                   tuple(p.seed for p in c.prompts[:k])))
    return dataclasses.replace(bundle, rectifications=tuple(rects), rectification_max=None,
                               info={**bundle.info, "rectification_source": "scores",
                                     "rectification_rule": {"wrong_below": wrong_below,
                                                            "known_at_least": known_at_least}})


def score_names(pipe, classifier, names: Mapping[int, Sequence[str]], *, images_per_name: int = IMAGES_PER_NAME,
                config=None, template: str = SCORE_TEMPLATE, out: str | Path | None = None,
                progress: bool = True) -> dict[str, dict[str, dict[str, float]]]:
    """Score every name of every class: mean/std of P(true class) over ``images_per_name`` images.

    ``classifier`` is an :class:`iceb.metrics.classifiers.ImageClassifier` whose label ids are the class
    ids. With ``out``, finished classes are written after each class and skipped on a rerun (resume).
    """
    from tqdm.auto import tqdm

    from iceb.generation import GenerationConfig, generate
    from iceb.utils.io import write_json

    config = config or GenerationConfig()
    done: dict[str, dict[str, dict[str, float]]] = {}
    if out is not None and Path(out).is_file():
        done = json.loads(Path(out).read_text())
    seeds = list(range(images_per_name))
    for cid, class_names in tqdm(list(names.items()), desc="scoring names", disable=not progress):
        key = str(int(cid))
        if key in done and set(done[key]) == set(class_names):
            continue
        if not 0 <= int(cid) < classifier.num_classes:
            raise ValueError(f"class {cid} is outside the classifier's {classifier.num_classes} labels")
        row = {}
        for name in class_names:
            images = generate(pipe, [template.format(name)] * len(seeds), seeds, config, progress=False)
            p = np.asarray(classifier.predict_proba(images), dtype=np.float64)[:, int(cid)]
            row[name] = {"mean": float(p.mean()), "std": float(p.std(ddof=1)) if len(p) > 1 else 0.0,
                         "number": len(p)}
        done[key] = row
        if out is not None:
            write_json(out, done)
    return done
