"""Arbitrary concept editing (ICEB's AICE) on a :class:`~iceb.data.split_bundle.SplitBundle`.

One code path for every world: the bundle is EMCID's official split (``ace``, world ``imagenet``), the
project's 1000-class split (``ace-1k``, ``data/imagenet/split1k.json``) or the toy world's split
(``data/toy/split.json``, world ``toy``); a bundle can also be passed in directly.

For N edits the instance holds the first N edit pairs in the split's order and these prompt sets
(``group`` ties a prompt to its request):

- ``edit``: the bundle's training templates with the source name, seeded with the pair's template seeds
  (ICEB: the class's first 3 prompt seeds); ``true_class`` = source id, ``dest_class`` = destination id;
- ``edit_dest``: the same templates and seeds with the destination name (true = dest = destination id);
- ``general``: the source class's free-form prompts and their seeds, with the edited name;
- ``alias``: every alias of an edited source class (ICEB: every non-primary ``id2label`` synonym) with the
  class's free-form prompts, destination = the request's destination. A name that is itself edited by
  one of the first N requests (the 1k split's alias edits) is not an alias prompt.
- ``holdout``: the first ``holdout_prompts_per_class`` (ICEB: 3) prompts of every holdout class, with its
  primary name, ``true_class`` = its id, and its ``stratum``: the class's nearness to the instance's edited
  source classes (:func:`iceb.data.neighbours.stratifier`; WordNet on ImageNet, shape/colour in the toy
  world). The pooled holdout (the paper's metric) is unchanged; strata only add per-stratum rows.

Holdout seeds: EMCID's ``measure_specificity`` renders a class's 3 prompts as one batch with a single
generator whose seed is the first prompt seed of the *next* holdout class (a code quirk; the batch then
shares one noise stream). The project renders one image per (prompt, seed) with the prompt's own seed, so
an image never depends on batching and pre-edit images can be cached; the holdout images therefore differ
from the official ones in noise, not in distribution.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from editors.requests import EditRequest
from iceb.data.neighbours import stratifier
from iceb.data.split_bundle import Concept, SplitBundle, SplitError
from iceb.tasks import TASKS
from iceb.tasks.base import EvalPrompt, Task, TaskError, TaskInstance
from iceb.toy.worlds import TOY_WORLDS, is_toy_world, toy_world_dir
from iceb.utils.hashing import fixed_sample
from iceb.utils.paths import DATA_DIR

TOY_SPLIT = DATA_DIR / "toy" / "split.json"
SPLIT_1K = DATA_DIR / "imagenet" / "split1k.json"


SPLITS = ("test", "dev")


def check_split_name(split: str) -> None:
    """``split`` must be ``"test"`` (what the leaderboard reports) or ``"dev"`` (reserved for tuning)."""
    if split not in SPLITS:
        raise TaskError(f"unknown split {split!r}; expected 'test' or 'dev'")


def fill(template: str, name: str) -> str:
    """Put ``name`` in every ``{}`` slot (a released template without a slot stays as it is)."""
    return template.replace("{}", name)


def load_world_bundle(world: str, variant: str = "official", data_dir: str | Path | None = None) -> SplitBundle:
    """The bundle a task reads: ``variant`` "official" (EMCID) or "1k" (the project's) for ImageNet."""
    if is_toy_world(world):
        path = TOY_SPLIT if world == "toy" else toy_world_dir(world) / "split.json"
        if not path.is_file():
            raise TaskError(f"the {world!r} toy world's split {path} is missing; build that toy world first "
                            f"('iceb toy train --world {world} --stage export')")
        return SplitBundle.load(path)
    if world != "imagenet":
        raise TaskError(f"unknown world {world!r}; expected 'imagenet' or one of the toy worlds {sorted(TOY_WORLDS)}")
    if variant == "1k":
        if not SPLIT_1K.is_file():
            raise TaskError(f"{SPLIT_1K} is missing; rebuild it with 'python scripts/build_splits.py'")
        return SplitBundle.load(SPLIT_1K)
    from iceb.data.official import official_bundle

    return official_bundle(data_dir)


class SplitTask(Task):
    """Common plumbing: lazy bundle, world check, holdout prompts, test or dev split.

    ``split="dev"`` serves the bundle's dev split (:meth:`SplitBundle.dev`: requests and holdout reserved for
    tuning, disjoint from the test split) through the same code; a bundle without one is a :class:`TaskError`.

    ``score_requests=k`` keeps large edit counts affordable: every one of the N requests is edited, but when
    N > k only a fixed sample of k of them (:func:`iceb.utils.hashing.fixed_sample`, seeded by the task, split
    and N) has its prompts scored; the holdout is always scored whole. The sample's request ids are in the
    instance's ``info["scored_requests"]`` and its size in every row's ``n``.
    """

    default_metrics = ("iceb-cls",)
    variant = "official"

    def __init__(self, world: str = "imagenet", bundle: SplitBundle | None = None,
                 data_dir: str | Path | None = None, split: str = "test", score_requests: int | None = None) -> None:
        if score_requests is not None and (isinstance(score_requests, bool) or not isinstance(score_requests, int)
                                           or score_requests < 1):
            raise TaskError(f"score_requests must be a positive number of requests, got {score_requests!r}")
        self.score_requests = score_requests
        self.world_name = world
        self._bundle = bundle
        self.data_dir = data_dir
        check_split_name(split)
        self.split = split
        if bundle is not None and bundle.world != world:
            raise TaskError(f"task {self.name!r} for world {world!r} was given the {bundle.world!r} split "
                            f"{bundle.name!r}")
        if bundle is not None and split == "dev":
            self._bundle = self._dev(bundle)
        elif split == "dev" and not is_toy_world(world):  # no shipped ImageNet bundle reserves requests: say so before loading
            raise TaskError(f"task {self.name!r} on the {world!r} world has no dev split: EMCID's official split and "
                            f"the project's 1k split use every class they hold. Dev splits: the toy world's 'ace' "
                            f"and 'rectification' (or pass a bundle with dev_edits)")

    def _dev(self, bundle: SplitBundle) -> SplitBundle:
        if not bundle.has_dev:
            raise TaskError(f"task {self.name!r} on the {self.world_name!r} world (split {bundle.name!r}) has no dev "
                            f"split: no requests are reserved for tuning there. Dev splits: the toy world's "
                            f"'ace' and 'rectification'")
        return bundle.dev()

    @property
    def world(self) -> str:  # type: ignore[override]
        return self.world_name

    @property
    def bundle(self) -> SplitBundle:
        if self._bundle is None:
            b = load_world_bundle(self.world_name, self.variant, self.data_dir)
            self._bundle = self._dev(b) if self.split == "dev" else b
        return self._bundle

    def _holdout_prompts(self, edited_sources: Iterable[int] = (), exclude: set[int] = frozenset()
                         ) -> list[EvalPrompt]:
        """The holdout prompts, each with its stratum against ``edited_sources`` (the requests' source ids)."""
        b, out = self.bundle, []
        k = b.holdout_prompts_per_class
        stratum = stratifier(b, edited_sources)
        for cid in b.holdout:
            if cid in exclude:
                continue
            c = b.concept(cid)
            if len(c.prompts) < k:
                raise TaskError(f"holdout class {cid} ({c.name}) has {len(c.prompts)} prompts; the split needs {k}")
            st = stratum(cid)
            out.extend(EvalPrompt(fill(p.template, c.name), p.seed, "holdout", cid, None, f"holdout:{cid}", st)
                       for p in c.prompts[:k])
        return out

    def request_id(self, i: int) -> str:
        """The id of the split's ``i``-th request: ``ace-0003``; on the dev split ``ace-dev-0003``."""
        return f"{self.name}{'-dev' if self.split == 'dev' else ''}-{i:04d}"

    def other_names(self, request: EditRequest) -> tuple[str, ...]:
        """Other names of a request's source concept, for the ``aliases`` attack: its correct aliases, then the
        names the model never learned for it (toy world: ``untrained_aliases``), the request's own name left out.

        Args:
            request: A request of this task (its ``source_id`` names the concept).

        Returns:
            The names, in that order; empty for a request without a known source concept.
        """
        if request.source_id is None:
            return ()
        try:
            c = self.bundle.concept(int(request.source_id))
        except (SplitError, ValueError):
            return ()
        names = list(c.aliases) + [c.name] + list(c.info.get("untrained_aliases", ()))
        return tuple(dict.fromkeys(x for x in names if x != request.source))

    def scored(self, n: int) -> set[int]:
        """The indices of N's requests whose prompts are scored: all, or a fixed sample (``score_requests``)."""
        return set(fixed_sample(n, self.score_requests, "score-sample", self.name, self.split, n))

    def _instance(self, n: int, requests: list[EditRequest], prompts: list[EvalPrompt],
                  info: dict[str, Any]) -> TaskInstance:
        b = self.bundle
        scored = self.scored(n)
        sample = ({"scored_requests": [r.request_id for i, r in enumerate(requests) if i in scored]}
                  if len(scored) < n else {})
        return TaskInstance(self.name, n, tuple(requests), tuple(prompts), self.world_name,
                            {"split": b.name, "split_version": b.version, "split_checksum": b.checksum()[:16],
                             **({"split_part": "dev"} if self.split == "dev" else {}), **sample, **info})


class ACETask(SplitTask):
    name = "ace"
    description = "arbitrary concept editing on ICEB's official split (toy world: the toy split)"

    @property
    def default_edits(self) -> tuple[int, ...]:  # type: ignore[override]
        d = self.bundle.info.get("default_edits")
        return tuple(int(x) for x in d) if d else (self.max_edits,)

    @property
    def max_edits(self) -> int:
        return len(self.bundle.edits)

    def _build(self, n: int) -> TaskInstance:
        b = self.bundle
        pairs = b.edits[:n]
        edited_names = {(e.source_id, e.source_name or b.concept(e.source_id).name) for e in pairs}
        requests, prompts = [], []
        scored = self.scored(n)
        for i, e in enumerate(pairs):
            src: Concept = b.concept(e.source_id)
            dst: Concept = b.concept(e.dest_id)
            name = e.source_name or src.name
            rid = self.request_id(i)
            if len(e.template_seeds) != len(b.templates):
                raise TaskError(f"edit {i} ({name}) has {len(e.template_seeds)} template seeds for "
                                f"{len(b.templates)} templates")
            requests.append(EditRequest(name, dst.name, b.templates, seed=e.seed_train, kind="update",
                                        source_id=src.id, destination_id=dst.id, request_id=rid))
            if i not in scored:
                continue
            for t, s in zip(b.templates, e.template_seeds):
                prompts.append(EvalPrompt(t.format(name), s, "edit", src.id, dst.id, rid))
            for t, s in zip(b.templates, e.template_seeds):
                prompts.append(EvalPrompt(t.format(dst.name), s, "edit_dest", dst.id, dst.id, rid))
            for p in src.prompts:
                prompts.append(EvalPrompt(fill(p.template, name), p.seed, "general", src.id, dst.id, rid))
            if e.source_name is None:  # a class edit: its aliases test generalisation
                for alias in src.aliases:
                    if (src.id, alias) in edited_names:
                        continue
                    for p in src.prompts:
                        prompts.append(EvalPrompt(fill(p.template, alias), p.seed, "alias", src.id, dst.id,
                                                  f"{rid}/alias:{alias}"))
        prompts.extend(self._holdout_prompts([r.source_id for r in requests]))
        return self._instance(n, requests, prompts, {})


class ACE1kTask(ACETask):
    worlds = ("imagenet",)
    name = "ace-1k"
    description = "arbitrary concept editing on the project's 1000-class split, up to 1000 edits"
    variant = "1k"

    def __init__(self, world: str = "imagenet", bundle: SplitBundle | None = None,
                 data_dir: str | Path | None = None, split: str = "test", score_requests: int | None = None) -> None:
        if world != "imagenet" and bundle is None:
            raise TaskError(f"{self.name!r} is an ImageNet task; the {world!r} world has 'ace'")
        super().__init__(world, bundle, data_dir, split, score_requests)


TASKS.register("ace", ACETask)
TASKS.register("ace-1k", ACE1kTask)
