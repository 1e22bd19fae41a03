"""The toy world's image classifier: a small CNN over 32x32 renders, trained with the toy model.

Heads: the concept (``num_classes`` outputs, = concept ids) from globally pooled features, and the context
attributes (position, size, background) from a coarse 4x4 feature map (position needs where, not just
what). Weights ship as ``data/toy/classifier.safetensors`` with ``classifier.json`` (the architecture); they
are read with safetensors only.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from iceb.metrics.classifiers import ImageClassifier
from iceb.toy.worlds import toy_world_dir
from iceb.utils.paths import DATA_DIR

CLASSIFIER_WEIGHTS = DATA_DIR / "toy" / "classifier.safetensors"
CLASSIFIER_CONFIG = DATA_DIR / "toy" / "classifier.json"
ATTRIBUTE_HEADS: dict[str, int] = {"position": 3, "size": 2, "background": 2}


class ToyNet(nn.Module):
    """5 conv layers (32 -> 16 -> 8 px), a concept head and three attribute heads."""

    def __init__(self, num_classes: int = 64, width: int = 32) -> None:
        super().__init__()
        w = width

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.SiLU())

        self.features = nn.Sequential(block(3, w, 1), block(w, 2 * w, 2), block(2 * w, 2 * w, 1),
                                      block(2 * w, 4 * w, 2), block(4 * w, 4 * w, 1))
        self.concept = nn.Linear(4 * w, num_classes)
        self.attributes = nn.ModuleDict({k: nn.Linear(4 * w * 16, n) for k, n in ATTRIBUTE_HEADS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x``: (N, 3, 32, 32) in [-1, 1]. Returns logits per head."""
        f = self.features(x)
        out = {"concept": self.concept(f.mean((2, 3)))}
        coarse = nn.functional.adaptive_avg_pool2d(f, 4).flatten(1)
        out.update({k: head(coarse) for k, head in self.attributes.items()})
        return out


def to_tensor(images: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]; resized to 32 px if needed."""
    arr = np.stack([np.asarray(im) for im in images]) if not isinstance(images, np.ndarray) else images
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected images of shape (N, H, W, 3), got {arr.shape}")
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if x.shape[-1] != 32 or x.shape[-2] != 32:
        x = nn.functional.interpolate(x, size=(32, 32), mode="area")
    return x


def save_classifier(net: ToyNet, config: dict[str, Any], weights: Path = CLASSIFIER_WEIGHTS,
                    config_path: Path = CLASSIFIER_CONFIG) -> None:
    from safetensors.torch import save_file

    from iceb.utils.io import atomic_path

    weights.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(weights) as tmp:
        save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(tmp))
    with atomic_path(config_path) as tmp:
        Path(tmp).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_net(weights: Path = CLASSIFIER_WEIGHTS, config_path: Path = CLASSIFIER_CONFIG) -> tuple[ToyNet, dict]:
    from safetensors.torch import load_file

    if not weights.is_file() or not config_path.is_file():
        raise FileNotFoundError(f"the toy classifier is missing ({weights}, {config_path}); "
                                f"train it with 'iceb toy train --stage classifier'")
    config = json.loads(config_path.read_text())
    net = ToyNet(num_classes=int(config["num_classes"]), width=int(config.get("width", 32)))
    net.load_state_dict(load_file(str(weights)))
    net.eval()
    return net, config


class ToyClassifier(ImageClassifier):
    """Concept probabilities over the toy world's trained concepts (index = concept id)."""

    name = "toy"
    world = "toy"  # whose shipped weights it loads (data/<world>/classifier.*)

    def __init__(self, device: str = "cpu", batch_size: int = 256, weights: str | Path | None = None,
                 config: str | Path | None = None, **_: Any) -> None:
        super().__init__(device=device, batch_size=batch_size)
        folder = toy_world_dir(self.world)
        self.net, self.config = load_net(Path(weights) if weights else folder / CLASSIFIER_WEIGHTS.name,
                                         Path(config) if config else folder / CLASSIFIER_CONFIG.name)
        self.net.to(device)

    @property
    def num_classes(self) -> int:
        return int(self.config["num_classes"])

    @torch.no_grad()
    def predict_all(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Probabilities of every head: ``concept`` (N, C) and the attributes (N, k), float64."""
        outs: dict[str, list[np.ndarray]] = {}
        for i in range(0, len(images), self.batch_size):
            x = to_tensor(images[i:i + self.batch_size]).to(self.device)
            for k, logits in self.net(x).items():
                outs.setdefault(k, []).append(torch.softmax(logits.double(), -1).cpu().numpy())
        heads = ["concept", *ATTRIBUTE_HEADS]
        return {k: np.concatenate(outs[k]) if k in outs else np.zeros((0, self._width(k))) for k in heads}

    def _width(self, head: str) -> int:
        return self.num_classes if head == "concept" else ATTRIBUTE_HEADS[head]

    def predict_proba(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self.predict_all(images)["concept"]


class Toy1kClassifier(ToyClassifier):
    """The 1,536-concept toy world's classifier (``data/toy-1k/classifier.*``)."""

    name = "toy-1k"
    world = "toy-1k"
