"""The task contract: for any N up to the task's maximum, the first N edit requests and the evaluation
prompt sets, each prompt with its seed and expected classes.

Prompt sets (the ``subset`` of an :class:`EvalPrompt`) follow ICEB:

- ``edit``: the requests' training templates filled with the source name (seeds: the class's first
  prompt seeds), scored for P(source) and P(destination);
- ``edit_dest``: the same templates filled with the destination name (the destination's own score);
- ``general``: free-form prompts naming the source;
- ``alias``: free-form prompts naming an alias of the source;
- ``holdout``: prompts of classes that are not edited, scored for their own class; each carries a
  ``stratum``, its class's nearness to the edited source classes (:mod:`iceb.data.neighbours`);
- ``coco``: COCO-30k captions the harness appends to any task (``--coco N``), for the general-capability
  metrics (CLIP score, FID, LPIPS); no task builds them itself.

Tasks know nothing of editors; the harness brings the two together.
"""
from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from editors.requests import EditRequest
from iceb.utils.hashing import stable_hash

SUBSETS = ("edit", "edit_dest", "general", "alias", "holdout", "coco")


class TaskError(ValueError):
    pass


@dataclass(frozen=True)
class EvalPrompt:
    """One image to generate and score: ``prompt`` with ``seed``.

    ``true_class`` is the class the prompt names (the source, an alias's class or a holdout class);
    ``dest_class`` is the edit's destination class when the prompt belongs to an edit request;
    ``group`` ties the prompt to its request (for per-request averages, as ICEB averages);
    ``stratum`` (holdout prompts) is how near the prompt's class is to the instance's edited source classes
    (:mod:`iceb.data.neighbours`: ``sibling``/``near``/``far`` on ImageNet, ``shares-*`` in the toy world),
    empty where it does not apply;
    ``labels`` are the texts a zero-shot judge chooses between for this image (``debias``: the female and the
    male destination of the prompt's profession, in that order), empty where no metric needs them;
    ``replicate`` is which repetition of the task's protocol the image belongs to where a task repeats it under
    several global seeds (``debias``: the official seeds 0-9; metrics report the spread over replicates), None
    elsewhere.
    """

    prompt: str
    seed: int
    subset: str
    true_class: int | str | None = None
    dest_class: int | str | None = None
    group: str = ""
    stratum: str = ""
    labels: tuple[str, ...] = ()
    replicate: int | None = None

    def __post_init__(self) -> None:
        if self.subset not in SUBSETS:
            raise TaskError(f"unknown prompt subset {self.subset!r}; expected one of {SUBSETS}")
        if isinstance(self.labels, list):
            object.__setattr__(self, "labels", tuple(self.labels))


@dataclass(frozen=True)
class TaskInstance:
    """What a task gives the harness for one edit count."""

    task: str
    n_edits: int
    requests: tuple[EditRequest, ...]
    prompts: tuple[EvalPrompt, ...]
    world: str = "imagenet"
    info: dict[str, Any] = field(default_factory=dict)

    def subset(self, name: str) -> list[EvalPrompt]:
        return [p for p in self.prompts if p.subset == name]

    def counts(self) -> dict[str, int]:
        c = {"requests": len(self.requests)}
        for s in SUBSETS:
            c[s] = len(self.subset(s))
        if not c["coco"]:  # appended by the harness only (--coco); a task's own counts leave it out
            del c["coco"]
        return c

    def with_prompts(self, extra: "tuple[EvalPrompt, ...] | list[EvalPrompt]", **info: Any) -> "TaskInstance":
        """This instance with ``extra`` prompts appended (the harness's COCO captions) and ``info`` added."""
        return TaskInstance(self.task, self.n_edits, self.requests, self.prompts + tuple(extra), self.world,
                            {**self.info, **info})

    def limited(self, limit: int | None) -> "TaskInstance":
        """At most ``limit`` prompts per subset (smoke runs only: results are marked as such)."""
        if not limit:
            return self
        kept, seen = [], dict.fromkeys(SUBSETS, 0)
        for p in self.prompts:
            if seen[p.subset] < limit:
                kept.append(p)
                seen[p.subset] += 1
        return TaskInstance(self.task, self.n_edits, self.requests, tuple(kept), self.world,
                            {**self.info, "limit": limit})

    def strata(self) -> dict[str, dict[str, int]]:
        """Per holdout stratum (in order of first appearance): its holdout prompts and classes."""
        out: dict[str, dict[str, int]] = {}
        classes: dict[str, set] = {}
        for p in self.subset("holdout"):
            if not p.stratum:
                continue
            out.setdefault(p.stratum, {"prompts": 0, "classes": 0})["prompts"] += 1
            classes.setdefault(p.stratum, set()).add(p.true_class)
        for k, v in classes.items():
            out[k]["classes"] = len(v)
        return out

    def fingerprint(self) -> str:
        # a prompt without a stratum (labels, replicate) and a request without destinations hash as before those
        # fields existed (fingerprints of such instances are unchanged); where set, they are task data and enter
        # the hash
        return stable_hash("task-instance", [r.as_dict() for r in self.requests],
                           [_prompt_dict(p) for p in self.prompts])


def _prompt_dict(p: EvalPrompt) -> dict[str, Any]:
    d = asdict(p)
    for key, empty in (("stratum", ""), ("labels", ()), ("replicate", None)):
        if d[key] == empty:
            del d[key]
    return d


class Task(abc.ABC):
    """A benchmark task. Subclasses set ``name``, ``description``, ``world`` and implement ``build``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    world: ClassVar[str] = "imagenet"  # which classifier scores its images: "imagenet" or "toy"
    #: the edit counts a default sweep runs (EMCID: 1, 5, 10, ..., 300)
    default_edits: ClassVar[tuple[int, ...]] = (1, 5, 10)
    #: metrics a run computes by default
    default_metrics: ClassVar[tuple[str, ...]] = ("image-change",)
    #: the only edit counts the task serves, when it cannot serve every count from 1 to ``max_edits`` (the artists'
    #: lists exist for 1, 5, 10, ... only); such a task's requests of N need not be a prefix of a larger count's
    edit_counts: ClassVar[tuple[int, ...] | None] = None
    #: the worlds the task is defined for, when not every world (an ImageNet-only task: artists, nsfw, ...);
    #: ``iceb tasks show`` builds such a task for its first world when no flag names one
    worlds: ClassVar[tuple[str, ...] | None] = None

    @property
    def nested(self) -> bool:
        """Whether the requests of N are the first N of every larger count's (a sweep adds edits to the same)."""
        return self.edit_counts is None
    #: the metric whose classifier an editor's debiasing mode judges its trial images with (a name: tasks know
    #: nothing of metrics; the harness builds it and hands its ``judge`` to the editor); None: no judge
    judge: ClassVar[str | None] = None

    @property
    @abc.abstractmethod
    def max_edits(self) -> int: ...

    def check_n(self, n: int) -> None:
        if not isinstance(n, int) or n < 1 or n > self.max_edits:
            raise TaskError(f"task {self.name!r} supports 1 to {self.max_edits} edits; got {n}")
        if self.edit_counts is not None and n not in self.edit_counts:
            raise TaskError(f"task {self.name!r} serves {', '.join(map(str, self.edit_counts))} edits only; got {n}")

    def build(self, n: int) -> TaskInstance:
        """The first ``n`` edit requests and their evaluation prompts."""
        self.check_n(n)
        return self._build(n)

    @abc.abstractmethod
    def _build(self, n: int) -> TaskInstance: ...
