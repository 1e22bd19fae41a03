"""Concept rectification: a misunderstood name of a class (a "wrong alias") is edited into the class's
best-understood name (ICEB's ``ImageNetMendRequestDataset``; e.g. "man-eater" -> "white shark").

Labelling convention (shared with the metrics): every prompt of a rectification request has
``true_class == dest_class == class id``, so P(dest | source prompts) post - pre is the alias -> true-class
gain, and "forget" panels are skipped. Prompt sets for N requests (the first N of the split's list):

- ``edit``: the training templates with the wrong alias (seeds: the request's template seeds);
- ``edit_dest``: the same templates with the best name;
- ``general``: the class's free-form prompts with the wrong alias (official split: EMCID's lowercased
  ``rectification_val.csv`` prompts, kept in ``Concept.info["rectification_prompts"]``);
- ``holdout``: the split's holdout classes as in :mod:`iceb.tasks.ace` (EMCID reports the same holdout
  specificity for rectification), stratified against the rectified classes.

``rectification`` reads the official split (143 requests, the script edits the first 140) or the toy
split; ``rectification-1k`` derives its requests over all 1000 classes of the project's split with the
official rule (:func:`iceb.data.misunderstood_names.derive_rectifications`) from a class-name score file: EMCID's
``imgnet_prompts_cls.json`` by default (downloaded like the official split) or one made by
``iceb rectify score``.
"""
from __future__ import annotations

from pathlib import Path

from editors.requests import EditRequest
from iceb.data.split_bundle import SplitBundle
from iceb.tasks import TASKS
from iceb.tasks.ace import SplitTask, fill
from iceb.tasks.base import EvalPrompt, TaskError, TaskInstance


class RectificationTask(SplitTask):
    name = "rectification"
    description = "concept rectification: misunderstood aliases -> their class (official ICEB / toy)"

    @property
    def default_edits(self) -> tuple[int, ...]:  # type: ignore[override]
        d = self.bundle.info.get("rectification_default_edits")
        return tuple(int(x) for x in d) if d else (self.max_edits,)

    @property
    def max_edits(self) -> int:
        b = self.bundle
        n = len(b.rectifications)
        return min(n, b.rectification_max) if b.rectification_max else n

    def _build(self, n: int) -> TaskInstance:
        b = self.bundle
        requests, prompts = [], []
        scored = self.scored(n)
        for i, r in enumerate(b.rectifications[:n]):
            c = b.concept(r.class_id)
            rid = self.request_id(i)
            if len(r.template_seeds) != len(b.templates):
                raise TaskError(f"rectification {i} ({r.source}) has {len(r.template_seeds)} template seeds "
                                f"for {len(b.templates)} templates")
            requests.append(EditRequest(r.source, r.destination, b.templates, seed=r.seed_train, kind="rectify",
                                        source_id=c.id, destination_id=c.id, request_id=rid))
            if i not in scored:
                continue
            for t, s in zip(b.templates, r.template_seeds):
                prompts.append(EvalPrompt(t.format(r.source), s, "edit", c.id, c.id, rid))
            for t, s in zip(b.templates, r.template_seeds):
                prompts.append(EvalPrompt(t.format(r.destination), s, "edit_dest", c.id, c.id, rid))
            templates = c.info.get("rectification_prompts") or [p.template for p in c.prompts]
            if len(templates) != len(c.prompts):
                raise TaskError(f"class {c.id} has {len(templates)} rectification prompts for {len(c.prompts)} seeds")
            for t, p in zip(templates, c.prompts):
                prompts.append(EvalPrompt(fill(t, r.source), p.seed, "general", c.id, c.id, rid))
        prompts.extend(self._holdout_prompts([r.source_id for r in requests]))
        return self._instance(n, requests, prompts, {"kind": "rectify"})


class Rectification1kTask(RectificationTask):
    worlds = ("imagenet",)
    name = "rectification-1k"
    description = "concept rectification on the project's 1000-class split"
    variant = "1k"

    def __init__(self, world: str = "imagenet", bundle: SplitBundle | None = None,
                 data_dir: str | Path | None = None, scores: str | Path | None = None, split: str = "test",
                 score_requests: int | None = None) -> None:
        if world != "imagenet" and bundle is None:
            raise TaskError(f"{self.name!r} is an ImageNet task; the {world!r} world has 'rectification'")
        super().__init__(world, bundle, data_dir, split, score_requests)
        self.scores = scores

    @property
    def bundle(self) -> SplitBundle:
        if self._bundle is None:
            from iceb.data.misunderstood_names import with_rectifications
            from iceb.tasks.ace import load_world_bundle

            b = with_rectifications(load_world_bundle("imagenet", "1k"), self.scores, self.data_dir)
            self._bundle = self._dev(b) if self.split == "dev" else b
        return self._bundle


TASKS.register("rectification", RectificationTask)
TASKS.register("rectification-1k", Rectification1kTask)
