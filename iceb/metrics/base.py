"""The metric contract: per-image records first, then aggregates from pre- and post-edit records.

``score`` turns images (uint8 HxWx3) and their :class:`~iceb.tasks.base.EvalPrompt` into one JSON-able
record per image; the harness caches pre-edit records with the pre-edit images, so they are computed once
per (model, prompt, seed, settings). ``aggregate`` turns records into :class:`MetricValue` rows.
Metrics take images and records, never pipelines or editors.
"""
from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from iceb.tasks.base import EvalPrompt


@dataclass(frozen=True)
class MetricValue:
    """One number of a result: ``metric`` on prompt ``subset``, with the paper's ``bound`` when it has one.

    ``stderr``, ``ci_low`` and ``ci_high`` are the value's standard error and bootstrap 95% interval with
    requests as clusters (:mod:`iceb.metrics.uncertainty`), resting on ``n_groups`` clusters; None where the
    value has none (one cluster, or a statistic of a set such as FID).
    """

    subset: str
    metric: str
    value: float
    bound: float | None = None
    n: int = 0
    higher_is_better: bool = True
    stderr: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n_groups: int | None = None

    def with_stats(self, stats) -> "MetricValue":
        """This value with the uncertainty of a :class:`~iceb.metrics.uncertainty.ClusterStats` (value kept)."""
        return dataclasses.replace(self, stderr=stats.stderr, ci_low=stats.ci_low, ci_high=stats.ci_high,
                                   n_groups=stats.n_groups)


class Metric(abc.ABC):
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: a key that changes when the per-image records would change (model weights, preprocessing)
    version: ClassVar[str] = "1"

    def __init__(self, world: str = "imagenet", device: str = "cpu", classifier: str | None = None,
                 **kwargs: Any) -> None:
        self.world = world
        self.device = device
        self.classifier_name = classifier

    def record_key(self) -> str:
        """Identifies this scorer's per-image records in the cache."""
        return f"{self.name}-v{self.version}-{self.world}"

    @abc.abstractmethod
    def score(self, images: Sequence[np.ndarray], prompts: Sequence[EvalPrompt]) -> list[dict[str, Any]]:
        """One record per image."""

    @abc.abstractmethod
    def aggregate(self, prompts: Sequence[EvalPrompt], pre: Sequence[dict[str, Any]],
                  post: Sequence[dict[str, Any]]) -> list[MetricValue]:
        """Result values from the records of the same prompts before and after the edit."""
