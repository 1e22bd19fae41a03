"""Metric registry (same shape as editors and tasks)."""
from __future__ import annotations

from iceb.metrics.base import Metric, MetricValue
from iceb.utils.registry import Registry

METRICS: Registry = Registry("metric", entry_point_group="iceb.metrics")

METRICS.register("image-change", "iceb.metrics.image_change:ImageChange",
                 description="mean absolute pixel change between pre- and post-edit images, per prompt subset")
METRICS.register("iceb-cls", "iceb.metrics.panel:ICEBPanel",
                 description="ICEB panel: classifier scores (mean target probability) and top-1/top-5, pre/post")
METRICS.register("clip-score", "iceb.metrics.clip_score:CLIPScore",
                 description="CLIP score: 100 x cosine(image, caption), OpenCLIP ViT-L/14 (OpenAI weights)")
METRICS.register("fid", "iceb.metrics.fid:FID",
                 description="FID of generated COCO-caption images against real COCO images (Inception pool3)")
METRICS.register("lpips", "iceb.metrics.lpips_metric:LPIPS",
                 description="LPIPS (AlexNet, 64 px) between pre- and post-edit images")
METRICS.register("nudenet", "iceb.metrics.nudenet:NudeNet",
                 description="NudeNet 3.4.2 exposure counts (EMCID's I2P classes and total), pre/post; lower is better")
METRICS.register("gender-clip", "iceb.metrics.gender:GenderCLIP",
                 description="gender balance: CLIP ViT-L/14 zero-shot female/male share, "
                             "Delta = |p_female - 0.5| / 0.5 (EMCID's debiasing metric)")


def get_metric(name: str, **kwargs) -> Metric:
    """An instantiated metric.

    Args:
        name: A registered metric name (``iceb list metrics``), an entry point of the group
            ``iceb.metrics``, or ``package.module:Class``.
        **kwargs: Passed to the metric's constructor.

    Returns:
        The :class:`Metric` instance.

    Raises:
        KeyError: An unknown name (:class:`~iceb.utils.registry.UnknownNameError`, listing the known names
            and the closest match).
        ImportError: A ``package.module:Class`` or entry point that cannot be imported.
    """
    return METRICS.get(name)(**kwargs)


__all__ = ["METRICS", "Metric", "MetricValue", "get_metric"]
