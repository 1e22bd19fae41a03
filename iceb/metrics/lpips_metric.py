"""LPIPS (AlexNet, v0.1) between pre- and post-edit images at 64x64, the UCE/EMCID convention.

The ``lpips`` package ships only the linear heads; its AlexNet backbone would be downloaded from the PyTorch
site, which is never done here. The backbone comes from torchvision's ``alexnet-owt-7be5be79.pth`` (given as
``weights=``/``$ICEB_LPIPS_ALEXNET``, or found in torch's hub cache), read with ``torch.load(weights_only=True)``
or from a ``.safetensors`` copy. Without it: one clear error; a random backbone is never used silently.

Per image the record keeps a 64x64 thumbnail (bilinear resize; base64 uint8), so that pre-edit thumbnails are
cached and LPIPS(pre, post) is computed in ``aggregate``.
"""
from __future__ import annotations

import base64
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from iceb.metrics import METRICS
from iceb.metrics.base import Metric, MetricValue
from iceb.metrics.classifiers import WeightsNotFoundError
from iceb.metrics.panel import group_mean
from iceb.metrics.uncertainty import cluster_stats
from iceb.tasks.base import EvalPrompt

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
ALEXNET_URL = f"https://download.pytorch.org/models/{ALEXNET_FILE}"
SIZE = 64
# torchvision alexnet.features index -> lpips slice holding it
_SLICE = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}


def find_alexnet_weights(weights: str | Path | None = None) -> Path:
    from iceb.metrics.classifiers import find_local_weights

    return find_local_weights(
        weights, "ICEB_LPIPS_ALEXNET", [ALEXNET_FILE], "LPIPS's AlexNet backbone",
        f"The lpips package ships only its linear heads. On a machine with internet fetch {ALEXNET_URL}, copy it "
        f"here and set ICEB_LPIPS_ALEXNET=/path/{ALEXNET_FILE} (read with torch.load(weights_only=True)).")


def build_lpips(weights: str | Path | None = None, device: str = "cpu"):
    """lpips.LPIPS(net='alex') with its shipped heads and a backbone loaded from local weights only."""
    try:
        import lpips
    except ImportError:
        raise WeightsNotFoundError("LPIPS needs the lpips package: pip install 'iceb[lpips]'") from None
    from iceb.metrics.fid import load_state

    path = find_alexnet_weights(weights)
    state = load_state(path)
    with warnings.catch_warnings():  # torchvision's 'pretrained' deprecation, from inside lpips
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False)  # heads: package files
    mapped, missing = {}, []
    for i, k in _SLICE.items():
        for w in ("weight", "bias"):
            src = f"features.{i}.{w}"
            if src not in state:
                missing.append(src)
            else:
                mapped[f"slice{k}.{i}.{w}"] = state[src]
    if missing:
        raise WeightsNotFoundError(f"{path} is not torchvision AlexNet weights: missing {missing}")
    model.net.load_state_dict(mapped, strict=True)
    return model.to(device).eval()


def thumbnail(im: np.ndarray, size: int = SIZE) -> np.ndarray:
    from PIL import Image

    a = np.asarray(im)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 image, got {a.dtype} {a.shape}")
    return np.asarray(Image.fromarray(a).resize((size, size), Image.BILINEAR), dtype=np.uint8)


class LPIPS(Metric):
    name = "lpips"
    description = "LPIPS (AlexNet, 64 px) between pre- and post-edit images"
    version = "1"

    def __init__(self, world: str = "imagenet", device: str = "cpu", classifier: str | None = None,
                 weights: str | None = None, batch_size: int = 64, model: Any = None, **kwargs: Any) -> None:
        super().__init__(world=world, device=device, classifier=classifier, **kwargs)
        self.weights, self.batch_size, self._model = weights, batch_size, model

    def record_key(self) -> str:
        return f"{self.name}-v{self.version}-thumb{SIZE}"

    @property
    def model(self):
        if self._model is None:
            self._model = build_lpips(self.weights, self.device)
        return self._model

    def score(self, images: Sequence[np.ndarray], prompts: Sequence[EvalPrompt]) -> list[dict[str, Any]]:
        return [{"thumb": base64.b64encode(thumbnail(im).tobytes()).decode("ascii")} for im in images]

    def distances(self, a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> np.ndarray:
        """LPIPS between 64x64 uint8 thumbnails a[i] and b[i], batched, inputs scaled to [-1, 1]."""
        import torch

        model, out = self.model, []
        with torch.no_grad():
            for i in range(0, len(a), self.batch_size):
                x = [torch.from_numpy(np.stack(s[i:i + self.batch_size]).transpose(0, 3, 1, 2).copy())
                     .float().div(127.5).sub(1.0).to(self.device) for s in (a, b)]
                out.append(model(x[0], x[1]).reshape(-1).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    def aggregate(self, prompts: Sequence[EvalPrompt], pre: Sequence[dict[str, Any]],
                  post: Sequence[dict[str, Any]]) -> list[MetricValue]:
        if not (len(prompts) == len(pre) == len(post)):
            raise ValueError(f"misaligned inputs: {len(prompts)} prompts, {len(pre)} pre, {len(post)} post")

        def dec(r):
            return np.frombuffer(base64.b64decode(r["thumb"]), np.uint8).reshape(SIZE, SIZE, 3)

        d = self.distances([dec(r) for r in pre], [dec(r) for r in post]) if prompts else np.zeros(0)
        rows = []
        for subset in sorted({p.subset for p in prompts}):
            idx = [i for i, p in enumerate(prompts) if p.subset == subset]
            groups, dist = [prompts[i].group for i in idx], [float(d[i]) for i in idx]
            v = group_mean(groups, dist)
            # edited concepts should change (higher is better); holdout and destinations should not
            rows.append(MetricValue(subset, "lpips", v, None, len(idx), subset in ("edit", "general", "alias"))
                        .with_stats(cluster_stats(dist, groups, weighting="groups")))
        return rows


METRICS.register("lpips", LPIPS)
