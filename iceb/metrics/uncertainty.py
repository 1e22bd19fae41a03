"""Uncertainty of an aggregate: the cluster-robust standard error and a bootstrap interval, requests as clusters.

A result value is a mean over images, but the images of one edit request (``EvalPrompt.group``) are not
independent draws: they share the edit. So the unit of resampling is the request (the *cluster*), never the
single image. Prompts without a group (``group == ""``) are clusters of their own, one image each, which is
per-image resampling for them. In ICEB's tasks holdout prompts are grouped by their holdout class and general
and alias prompts by their request.

Two weightings, matching how the metrics average today (the value itself is never changed here):

``"images"`` (the plain mean over images; e.g. ``image_change``)
    With clusters ``g = 1..G`` of ``n_g`` images, sums ``S_g = sum_i y_gi``, ``N = sum_g n_g`` and
    ``ybar = sum_g S_g / N``, the cluster-robust (CR1) standard error of ``ybar`` is::

        SE = sqrt( G / (G - 1) * sum_g (S_g - n_g * ybar)^2 ) / N

    For equal cluster sizes ``n`` this is exactly ``sd(ybar_g) / sqrt(G)``, the standard error of the
    cluster means (``sd`` with ``ddof=1``). A bootstrap replicate draws G clusters with replacement and
    recomputes the image-weighted mean ``sum S_g* / sum n_g*``.

``"groups"`` (ICEB's mean of per-request means; the panel, CLIP score, LPIPS; see ``panel.group_mean``)
    ``theta = mean_g ybar_g`` and ``SE = sd(ybar_g, ddof=1) / sqrt(G)``; a replicate draws G clusters with
    replacement and averages their means. For equal cluster sizes both weightings give the same value and SE.
    (``group_mean`` pools ungrouped prompts into one group for the value; here each is its own cluster. The
    two agree whenever a subset's prompts are all grouped or all ungrouped, as in every task of the project.)

The interval is the percentile interval of :data:`N_BOOT` replicates drawn with
``numpy.random.default_rng(SEED)`` (so a row's interval is reproducible). With one cluster there is nothing
to resample: SE and interval are None.

Differences (post − pre on the same images) are handled by passing the per-image differences; statistics of
a set rather than a mean over images (FID) have no such decomposition and carry no uncertainty.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple, Sequence

import numpy as np

#: bootstrap replicates per aggregate
N_BOOT = 1000
#: the bootstrap's seed (fixed: a row's interval is reproducible)
SEED = 0
#: the interval's coverage
LEVEL = 0.95


class ClusterStats(NamedTuple):
    mean: float
    stderr: float | None
    ci_low: float | None
    ci_high: float | None
    n_groups: int


def clusters(values: Sequence[float], groups: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cluster (in order of first appearance): its sum, its image count and its mean.

    An empty group name makes an image a cluster of its own.
    """
    if len(values) != len(groups):
        raise ValueError(f"{len(values)} values but {len(groups)} groups")
    if not len(values):
        raise ValueError("no values to aggregate")
    by: "OrderedDict[object, list[float]]" = OrderedDict()
    for i, (g, v) in enumerate(zip(groups, values)):
        by.setdefault(g if g != "" else ("", i), []).append(float(v))
    sums = np.array([np.sum(v) for v in by.values()], dtype=np.float64)
    sizes = np.array([len(v) for v in by.values()], dtype=np.float64)
    means = np.array([np.mean(v) for v in by.values()], dtype=np.float64)
    return sums, sizes, means


def _check(weighting: str) -> None:
    if weighting not in ("images", "groups"):
        raise ValueError(f"weighting must be 'images' or 'groups', got {weighting!r}")


def bootstrap(values: Sequence[float], groups: Sequence[str], *, n_boot: int = N_BOOT, seed: int = SEED,
              weighting: str = "images") -> np.ndarray:
    """``n_boot`` bootstrap replicates of the mean, resampling clusters (requests) with replacement."""
    _check(weighting)
    sums, sizes, means = clusters(values, groups)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(sums), size=(n_boot, len(sums)))
    if weighting == "images":
        return sums[idx].sum(axis=1) / sizes[idx].sum(axis=1)
    return means[idx].mean(axis=1)


def percentile_interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval of bootstrap replicates (numpy's linear quantiles)."""
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(np.asarray(replicates, dtype=np.float64), [a, 1.0 - a])
    return float(lo), float(hi)


def cluster_stats(values: Sequence[float], groups: Sequence[str], *, n_boot: int = N_BOOT, seed: int = SEED,
                  level: float = LEVEL, weighting: str = "images") -> ClusterStats:
    """(mean, stderr, ci_low, ci_high, n_groups) of ``values`` with ``groups`` as clusters (module docstring).

    Args:
        values: one number per image (a probability, a 0/1 hit, a per-image difference, a distance).
        groups: the request each image belongs to (``EvalPrompt.group``); ``""`` = a cluster of its own.
        n_boot: bootstrap replicates.
        seed: the seed of ``numpy.random.default_rng``.
        level: the interval's coverage.
        weighting: ``"images"`` (mean over images) or ``"groups"`` (mean of per-group means).

    Returns:
        A :class:`ClusterStats`; ``stderr``, ``ci_low`` and ``ci_high`` are None with a single cluster.
    """
    _check(weighting)
    sums, sizes, means = clusters(values, groups)
    g = len(sums)
    if weighting == "images":
        mean = float(np.mean(np.asarray(values, dtype=np.float64)))
    else:
        mean = float(np.mean(means))
    if g < 2:
        return ClusterStats(mean, None, None, None, g)
    if weighting == "images":
        n = float(sizes.sum())
        resid = sums - sizes * mean
        se = float(np.sqrt(g / (g - 1.0) * np.sum(resid ** 2)) / n)
    else:
        se = float(np.std(means, ddof=1) / np.sqrt(g))
    lo, hi = percentile_interval(bootstrap(values, groups, n_boot=n_boot, seed=seed, weighting=weighting), level)
    return ClusterStats(mean, se, lo, hi, g)


def combine_mean(parts: Sequence[tuple[Sequence[float], Sequence[str], str]], *, n_boot: int = N_BOOT,
                 seed: int = SEED, level: float = LEVEL) -> tuple[float | None, float | None, float | None]:
    """(stderr, ci_low, ci_high) of the plain average of independent means (e.g. ICEB's average score).

    ``parts`` are ``(values, groups, weighting)`` of disjoint prompt sets (different images), so the
    variances add: ``SE = sqrt(sum_k SE_k^2) / K``; the interval is the percentile interval of the averaged
    replicates, part ``k`` drawn with seed ``seed + k``. None when any part has a single cluster.
    """
    ses, reps = [], []
    for k, (values, groups, weighting) in enumerate(parts):
        st = cluster_stats(values, groups, n_boot=n_boot, seed=seed + k, level=level, weighting=weighting)
        if st.stderr is None:
            return None, None, None
        ses.append(st.stderr)
        reps.append(bootstrap(values, groups, n_boot=n_boot, seed=seed + k, weighting=weighting))
    se = float(np.sqrt(np.sum(np.square(ses))) / len(parts))
    lo, hi = percentile_interval(np.mean(reps, axis=0), level)
    return se, lo, hi
