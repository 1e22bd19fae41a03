"""How much an edit changed the images: mean |post - pre| of pixel values in [0, 1], per subset.

Model-independent and cheap, so it works on any model (including ``tiny``). On edited prompts a large
value means the edit acted; on holdout prompts a small value means it left other concepts alone.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import numpy as np

from iceb.metrics import METRICS
from iceb.metrics.base import Metric, MetricValue
from iceb.metrics.uncertainty import cluster_stats
from iceb.tasks.base import EvalPrompt


class ImageChange(Metric):
    name = "image-change"
    description = "mean absolute pixel change between pre- and post-edit images, per prompt subset"

    def score(self, images: Sequence[np.ndarray], prompts: Sequence[EvalPrompt]) -> list[dict[str, Any]]:
        # A 16x16 thumbnail keeps the record small and the comparison meaningful at any resolution.
        from PIL import Image

        out = []
        for im in images:
            thumb = np.asarray(Image.fromarray(im).resize((16, 16), Image.BILINEAR), dtype=np.float32) / 255.0
            out.append({"thumb": thumb.round(4).tolist()})
        return out

    def aggregate(self, prompts, pre, post) -> list[MetricValue]:
        per_subset: dict[str, list[float]] = defaultdict(list)
        groups: dict[str, list[str]] = defaultdict(list)
        for p, a, b in zip(prompts, pre, post):
            per_subset[p.subset].append(float(np.abs(np.asarray(a["thumb"]) - np.asarray(b["thumb"])).mean()))
            groups[p.subset].append(p.group)
        # a plain mean over images: its uncertainty with image weighting, requests as clusters
        return [MetricValue(s, "image_change", float(np.mean(v)), None, len(v), higher_is_better=(s != "holdout"))
                .with_stats(cluster_stats(v, groups[s], weighting="images"))
                for s, v in sorted(per_subset.items())]


METRICS.register("image-change", ImageChange)
