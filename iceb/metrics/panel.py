"""ICEB's classifier panel: Efficacy, Generalization, Alias2Dest, Holdout Delta (and Dest Forget, rectification).

Per image, :meth:`ICEBPanel.score` keeps only what the panel needs from the classifier: the probability,
top-1 and top-5 hits of the prompt's ``true_class`` and ``dest_class``, plus the top-5 ids and probabilities
(a few numbers of JSON, so pre-edit records can be cached). :meth:`ICEBPanel.aggregate` turns pre- and
post-edit records into the paper's panels (EMCID ``scripts/plot_metrics.py``):

=======================  ===========  =========================================  ===========================
metric                   subset       value                                      bound (as the paper draws)
=======================  ===========  =========================================  ===========================
source_forget            edit/general pre − post of P(source | source prompts)    pre P(source)
source2dest              edit/general post − pre of P(dest | source prompts)      1 − pre P(dest)
alias2dest               alias        post − pre of P(dest | alias prompts)       1 − pre P(dest)
alias_forget             alias        pre − post of P(alias's class)             pre P(class)
dest_forget              edit_dest    pre − post of P(dest | dest prompts)        pre P(dest)   (lower better)
holdout_delta            holdout      post − pre of P(true | holdout prompts)     − pre P(true)
rectify_gain             edit/general post − pre of P(true) where true == dest    1 − pre P(true)
                         /alias
average_score            -            (general source2dest + holdout_delta) / 2  (the paper's ablation score)
=======================  ===========  =========================================  ===========================

Holdout per neighbour stratum: for every ``stratum`` among the holdout prompts (``EvalPrompt.stratum``, see
:mod:`iceb.data.neighbours`: ``sibling``/``near``/``far`` on ImageNet, ``shares-*`` in the toy world) the
holdout rows (``holdout_delta`` and its ``_top1``/``_top5`` variants, ``pre_true``/``post_true``) again, over
that stratum's images only, as subset ``holdout:<stratum>`` with ``n`` = its images. The pooled ``holdout``
rows (the paper's metric) are unchanged; because a holdout class lies in exactly one stratum, the pooled
value is the class-weighted mean of the strata's values (image-weighted, when every class has as many images).

Each has ``_top1`` and ``_top5`` variants (accuracy instead of mean probability), and the raw scores
``pre_<x>``/``post_<x>`` (x = source, dest or true). Averages are taken as ICEB takes them: over a request's
images first (``EvalPrompt.group``), then over requests. Prompts whose ``true_class == dest_class`` are
rectification prompts (a wrong alias mapped to its own class): their Forget panels are meaningless and are
replaced by ``rectify_gain``.

Every row carries its standard error and bootstrap 95% interval with requests as clusters
(:mod:`iceb.metrics.uncertainty`, weighting ``"groups"``: the same mean of per-request means): a post − pre
row takes them from the per-image differences, ``average_score`` from its two independent halves.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Sequence

import numpy as np

from iceb.data.neighbours import ALL_STRATA
from iceb.metrics import METRICS
from iceb.metrics.base import Metric, MetricValue
from iceb.metrics.classifiers import DEFAULT_CLASSIFIER, ImageClassifier, get_classifier
from iceb.metrics.uncertainty import cluster_stats, combine_mean
from iceb.tasks.base import EvalPrompt

#: (row-name suffix, record field): mean probability, top-1 accuracy, top-5 accuracy
KINDS: tuple[tuple[str, str], ...] = (("", "p"), ("_top1", "top1"), ("_top5", "top5"))


class PanelError(ValueError):
    """Records that cannot be aggregated (misaligned, or cached for other classes)."""


def _key(c: int | str) -> str:
    return str(c)


def resolve_class(clf: ImageClassifier, c: int | str) -> int:
    """The classifier's column for class id ``c`` (an index, or a label when the classifier has ``labels``)."""
    n = clf.num_classes
    if isinstance(c, (int, np.integer)) or (isinstance(c, str) and c.strip().lstrip("-").isdigit()):
        i = int(c)
        if not 0 <= i < n:
            raise PanelError(f"class id {c!r} is outside the classifier's {n} classes")
        return i
    labels = getattr(clf, "labels", None)
    if labels is not None:
        try:
            return list(labels).index(c)
        except ValueError:
            pass
    raise PanelError(f"class {c!r} is not an index and not one of the classifier's labels")


class ICEBPanel(Metric):
    name = "iceb-cls"
    description = "ICEB panel: classifier scores (mean target probability) and top-1/top-5, pre/post"
    version = "1"

    def __init__(self, world: str = "imagenet", device: str = "cpu",
                 classifier: str | ImageClassifier | None = None, batch_size: int = 32, **kwargs: Any) -> None:
        clf_obj = classifier if isinstance(classifier, ImageClassifier) else None
        name = (clf_obj.name or type(clf_obj).__name__) if clf_obj is not None else classifier
        if name is None:
            if world not in DEFAULT_CLASSIFIER:
                raise PanelError(f"no default classifier for world {world!r}; pass classifier=<name> "
                                 f"(known defaults: {DEFAULT_CLASSIFIER})")
            name = DEFAULT_CLASSIFIER[world]
        super().__init__(world=world, device=device, classifier=name, **kwargs)
        self.batch_size = batch_size
        self._clf = clf_obj  # built on first use, so aggregate() never loads weights

    @property
    def classifier(self) -> ImageClassifier:
        if self._clf is None:
            self._clf = get_classifier(self.classifier_name, device=self.device, batch_size=self.batch_size)
        return self._clf

    def record_key(self) -> str:
        safe = str(self.classifier_name).replace("/", "_").replace(":", "_")
        return f"{self.name}-v{self.version}-{self.world}-{safe}-{self.classifier.weights_id()}"

    # -- per image ----------------------------------------------------------------------------
    def score(self, images: Sequence[np.ndarray], prompts: Sequence[EvalPrompt]) -> list[dict[str, Any]]:
        if len(images) != len(prompts):
            raise PanelError(f"{len(images)} images but {len(prompts)} prompts")
        if not len(images):
            return []
        clf = self.classifier
        probs = np.asarray(clf.predict_proba(images), dtype=np.float64)
        if probs.shape != (len(images), clf.num_classes):
            raise PanelError(f"classifier {self.classifier_name!r} returned shape {probs.shape}, "
                             f"expected {(len(images), clf.num_classes)}")
        k = min(5, probs.shape[1])
        out = []
        for row, pr in zip(probs, prompts):
            # stable sort: ties broken by class index, so records are deterministic
            order = np.argsort(-row, kind="stable")
            top5 = order[:k]
            rec: dict[str, Any] = {"p": {}, "top1": {}, "top5": {},
                                   "top5_ids": [int(i) for i in top5],
                                   "top5_p": [float(row[i]) for i in top5]}
            for c in {pr.true_class, pr.dest_class} - {None}:
                i = resolve_class(clf, c)
                rec["p"][_key(c)] = float(row[i])
                rec["top1"][_key(c)] = bool(order[0] == i)
                rec["top5"][_key(c)] = bool(i in top5)
            out.append(rec)
        return out

    # -- aggregates ---------------------------------------------------------------------------
    def aggregate(self, prompts: Sequence[EvalPrompt], pre: Sequence[dict[str, Any]],
                  post: Sequence[dict[str, Any]]) -> list[MetricValue]:
        return panel_values(prompts, pre, post)


def _lookup(rec: dict[str, Any], field: str, cls: int | str, p: EvalPrompt, which: str) -> float:
    try:
        return float(rec[field][_key(cls)])
    except (KeyError, TypeError):
        raise PanelError(
            f"the {which}-edit record of prompt {p.prompt!r} (seed {p.seed}, subset {p.subset}) has no "
            f"{field!r} for class {cls!r}; it was scored for other classes (a stale record cache: delete the "
            f"'iceb-cls-*' folder under <out>/cache/records and rerun)") from None


def group_mean(groups: Sequence[str], values: Sequence[float]) -> float:
    """ICEB's average: the mean over each group's values, then the mean over groups."""
    by: "OrderedDict[str, list[float]]" = OrderedDict()
    for g, v in zip(groups, values):
        by.setdefault(g, []).append(v)
    return float(np.mean([np.mean(v) for v in by.values()]))


# (metric, subsets, prompt filter, class attr, raw name, sign (+1: post − pre), bound, higher_is_better)
_Sel = Callable[[EvalPrompt], bool]


def _normal(p: EvalPrompt) -> bool:
    return not (p.true_class is not None and p.true_class == p.dest_class)


def _rectify(p: EvalPrompt) -> bool:
    return p.true_class is not None and p.true_class == p.dest_class


_PANELS: tuple[tuple[str, tuple[str, ...], _Sel, str, str, int, str, bool], ...] = (
    ("source_forget", ("edit", "general"), _normal, "true_class", "source", -1, "pre", True),
    ("source2dest", ("edit", "general"), _normal, "dest_class", "dest", +1, "1-pre", True),
    ("alias_forget", ("alias",), _normal, "true_class", "source", -1, "pre", True),
    ("alias2dest", ("alias",), _normal, "dest_class", "dest", +1, "1-pre", True),
    ("rectify_gain", ("edit", "general", "alias"), _rectify, "true_class", "true", +1, "1-pre", True),
    ("dest_forget", ("edit_dest",), lambda p: True, "dest_or_true", "dest", -1, "pre", False),
    ("holdout_delta", ("holdout",), lambda p: True, "true_class", "true", +1, "-pre", True),
)


def _cls(p: EvalPrompt, attr: str) -> int | str | None:
    if attr == "dest_or_true":  # a destination prompt names the destination: its own class is the target
        return p.dest_class if p.dest_class is not None else p.true_class
    return getattr(p, attr)


def panel_values(prompts: Sequence[EvalPrompt], pre: Sequence[dict[str, Any]],
                 post: Sequence[dict[str, Any]]) -> list[MetricValue]:
    """All panel rows from aligned prompts and pre/post records (see the module docstring)."""
    if not (len(prompts) == len(pre) == len(post)):
        raise PanelError(f"misaligned inputs: {len(prompts)} prompts, {len(pre)} pre and {len(post)} post records")
    rows: list[MetricValue] = []
    found: dict[tuple[str, str], float] = {}
    parts: dict[tuple[str, str], tuple[list[float], list[str], str]] = {}
    for metric, subsets, sel, attr, raw, sign, bound_kind, hib in _PANELS:
        for subset in subsets:
            idx = [i for i, p in enumerate(prompts)
                   if p.subset == subset and sel(p) and _cls(p, attr) is not None]
            if idx:
                rows.extend(_rows(prompts, pre, post, idx, subset, metric, attr, raw, sign, bound_kind, hib,
                                  found, parts))
    for suffix, _ in KINDS:
        g, h = found.get(("general", "source2dest" + suffix)), found.get(("holdout", "holdout_delta" + suffix))
        if g is not None and h is not None:
            # two means over disjoint images (general and holdout prompts): independent, variances add
            se, lo, hi = combine_mean([parts[("general", "source2dest" + suffix)],
                                       parts[("holdout", "holdout_delta" + suffix)]])
            rows.append(MetricValue("-", "average_score" + suffix, (g + h) / 2.0, None,
                                    0, True, se, lo, hi))
    # the holdout per neighbour stratum (iceb.data.neighbours): extra rows "holdout:<stratum>", computed as
    # the pooled holdout rows above but over the stratum's images only
    (metric, _, sel, attr, raw, sign, bound_kind, hib), = (x for x in _PANELS if x[0] == "holdout_delta")
    for stratum in holdout_strata(prompts):
        idx = [i for i, p in enumerate(prompts) if p.subset == "holdout" and p.stratum == stratum
               and sel(p) and _cls(p, attr) is not None]
        if idx:
            rows.extend(_rows(prompts, pre, post, idx, f"holdout:{stratum}", metric, attr, raw, sign, bound_kind,
                              hib, {}, {}))
    return rows


def holdout_strata(prompts: Sequence[EvalPrompt]) -> list[str]:
    """The strata among the holdout prompts, nearest first (:data:`iceb.data.neighbours.ALL_STRATA`), then
    any other name alphabetically."""
    present = {p.stratum for p in prompts if p.subset == "holdout" and p.stratum}
    known = [s for s in ALL_STRATA if s in present]
    return known + sorted(present - set(known))


def _rows(prompts: Sequence[EvalPrompt], pre: Sequence[dict[str, Any]], post: Sequence[dict[str, Any]],
          idx: list[int], subset: str, metric: str, attr: str, raw: str, sign: int, bound_kind: str, hib: bool,
          found: dict[tuple[str, str], float],
          parts: dict[tuple[str, str], tuple[list[float], list[str], str]]) -> list[MetricValue]:
    """The rows of one panel ``metric`` over prompts ``idx``, labelled ``subset`` (``found``/``parts`` collect
    values and per-image parts across calls; a raw pre/post row already in ``found`` is not repeated)."""
    rows: list[MetricValue] = []
    groups = [prompts[i].group for i in idx]
    for suffix, field in KINDS:
        a = [_lookup(pre[i], field, _cls(prompts[i], attr), prompts[i], "pre") for i in idx]
        b = [_lookup(post[i], field, _cls(prompts[i], attr), prompts[i], "post") for i in idx]
        m_pre, m_post = group_mean(groups, a), group_mean(groups, b)
        value = sign * (m_post - m_pre)
        bound = {"pre": m_pre, "1-pre": 1.0 - m_pre, "-pre": -m_pre}[bound_kind]
        n = len(idx)
        # the uncertainty of a difference of two means on the same images: that of the per-image
        # differences (the value itself stays the difference of the two means, as before)
        diff = [sign * (y - x) for x, y in zip(a, b)]
        rows.append(MetricValue(subset, metric + suffix, value, bound, n, hib)
                    .with_stats(cluster_stats(diff, groups, weighting="groups")))
        # raw scores: for "source" lower after the edit is the goal; otherwise higher
        raw_hib = raw != "source"
        if metric == "dest_forget":
            raw_hib = True
        for when, v, per_image in (("pre", m_pre, a), ("post", m_post, b)):
            name = f"{when}_{raw}{suffix}"
            if (subset, name) in found:
                continue
            found[(subset, name)] = v
            rows.append(MetricValue(subset, name, v, None, n, raw_hib)
                        .with_stats(cluster_stats(per_image, groups, weighting="groups")))
        found[(subset, metric + suffix)] = value
        parts[(subset, metric + suffix)] = (diff, groups, "groups")
    return rows


METRICS.register("iceb-cls", ICEBPanel)
