"""CLIP score: 100 x cosine(image embedding, caption embedding), with OpenCLIP ViT-L/14 and OpenAI's weights.

EMCID scores COCO (and artist) images with ``openai/clip-vit-large-patch14`` ``logits_per_image``, which is
``logit_scale.exp() * cosine`` with ``logit_scale.exp() == 100`` for OpenAI's CLIP. We compute
``100 * cosine`` exactly, **not clamped at 0** (torchmetrics' ``CLIPScore`` clamps with ``max(.., 0)``;
EMCID's logits do not; for real images the cosine is positive anyway, so the two agree there).
OpenCLIP's ``ViT-L-14`` + OpenAI weights is the same network (QuickGELU, 224 px, bicubic resize of the
shortest side, centre crop, OpenAI mean/std), loaded here from safetensors only:

- ``weights=`` or ``$ICEB_CLIP_WEIGHTS``: an OpenCLIP ``.safetensors`` file (the hub's
  ``timm/vit_large_patch14_clip_224.openai/open_clip_model.safetensors``), or
- the Hugging Face cache holding that file.

``$ICEB_CLIP_ARCH`` names another OpenCLIP architecture for those weights (default ``ViT-L-14``; tests use a
random-weight ``ViT-S-32`` file so that a whole run goes through this loader). It enters the records' key.

Nothing is downloaded; without weights the metric raises one :class:`WeightsNotFoundError` saying how to get them.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from iceb.metrics import METRICS
from iceb.metrics.base import Metric, MetricValue
from iceb.metrics.classifiers import WeightsNotFoundError
from iceb.metrics.panel import group_mean
from iceb.metrics.uncertainty import cluster_stats
from iceb.tasks.base import EvalPrompt

CLIP_ARCH = "ViT-L-14"
CLIP_HUB = "timm/vit_large_patch14_clip_224.openai"
CLIP_FILE = "open_clip_model.safetensors"


def find_clip_weights(weights: str | None = None) -> str:
    """The local safetensors file for OpenCLIP ViT-L/14 (OpenAI), or a clear error."""
    path = weights or os.environ.get("ICEB_CLIP_WEIGHTS")
    if path:
        if not str(path).endswith(".safetensors"):
            raise WeightsNotFoundError(f"{path}: CLIP weights are loaded from .safetensors files only")
        if not os.path.isfile(path):
            raise WeightsNotFoundError(f"CLIP weights file {path} does not exist")
        return str(path)
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(CLIP_HUB, CLIP_FILE)
    except Exception:  # noqa: BLE001 - a broken cache is the same as no cache here
        found = None
    if isinstance(found, str):
        return found
    raise WeightsNotFoundError(
        f"CLIP ViT-L/14 (OpenAI) weights were not found: {CLIP_HUB}/{CLIP_FILE} is not in the Hugging Face "
        f"cache and ICEB_CLIP_WEIGHTS is not set. On a machine with internet run `hf download {CLIP_HUB} "
        f"{CLIP_FILE} --local-dir clip-l14`, copy the file here and set ICEB_CLIP_WEIGHTS=/path/{CLIP_FILE}.")


class CLIPScore(Metric):
    name = "clip-score"
    description = "CLIP score: 100 x cosine(image, caption), OpenCLIP ViT-L/14 (OpenAI weights)"
    version = "1"

    def __init__(self, world: str = "imagenet", device: str = "cpu", classifier: str | None = None,
                 weights: str | None = None, batch_size: int = 32, model: Any = None, preprocess: Any = None,
                 tokenizer: Any = None, **kwargs: Any) -> None:
        super().__init__(world=world, device=device, classifier=classifier, **kwargs)
        self.batch_size = batch_size
        self.weights = weights
        self._model, self._preprocess, self._tokenizer = model, preprocess, tokenizer
        self._ready = False

    @property
    def arch(self) -> str:
        """The OpenCLIP architecture: ``$ICEB_CLIP_ARCH`` or ViT-L/14 (the paper's)."""
        return os.environ.get("ICEB_CLIP_ARCH") or CLIP_ARCH

    def record_key(self) -> str:
        # records do not depend on the world: the caption is the prompt itself
        return f"{self.name}-v{self.version}-{self.arch}-openai"

    def _load(self) -> None:
        if self._model is not None:
            if self._preprocess is None or self._tokenizer is None:
                raise ValueError("a custom CLIP model needs preprocess= and tokenizer= too")
            self._model = self._model.to(self.device).eval()
            return
        import open_clip

        path = find_clip_weights(self.weights)
        model, _, preprocess = open_clip.create_model_and_transforms(
            self.arch, pretrained=path, force_quick_gelu=True, device=self.device)
        self._model, self._preprocess = model.eval(), preprocess
        self._tokenizer = open_clip.get_tokenizer(self.arch)

    def _ensure(self) -> None:
        if not self._ready:
            self._load()
            self._ready = True

    def image_features(self, images: Sequence[np.ndarray]):
        """Unit-norm float32 image embeddings, one row per uint8 HxWx3 image, in batches of ``batch_size``."""
        import torch
        from PIL import Image

        self._ensure()
        out = []
        with torch.no_grad():
            for i in range(0, len(images), self.batch_size):
                x = torch.stack([self._preprocess(Image.fromarray(np.asarray(im, dtype=np.uint8)))
                                 for im in images[i:i + self.batch_size]]).to(self.device)
                f = self._model.encode_image(x).float()
                out.append(f / f.norm(dim=-1, keepdim=True))
        return torch.cat(out) if out else torch.zeros(0)

    def text_features(self, texts: Sequence[str]):
        """Unit-norm float32 text embeddings, one row per text, in batches of ``batch_size``."""
        import torch

        self._ensure()
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                f = self._model.encode_text(self._tokenizer(list(texts[i:i + self.batch_size])).to(self.device)).float()
                out.append(f / f.norm(dim=-1, keepdim=True))
        return torch.cat(out) if out else torch.zeros(0)

    def embed(self, images: Sequence[np.ndarray], captions: Sequence[str]) -> np.ndarray:
        """100 x cosine(image_i, caption_i) for each pair, float64."""
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images but {len(captions)} captions")
        if not len(images):
            return np.zeros(0)
        fi, ft = self.image_features(images), self.text_features(captions)
        return (100.0 * (fi * ft).sum(-1)).double().cpu().numpy()

    def score(self, images: Sequence[np.ndarray], prompts: Sequence[EvalPrompt]) -> list[dict[str, Any]]:
        return [{"clip": float(v)} for v in self.embed(images, [p.prompt for p in prompts])]

    def aggregate(self, prompts: Sequence[EvalPrompt], pre: Sequence[dict[str, Any]],
                  post: Sequence[dict[str, Any]]) -> list[MetricValue]:
        if not (len(prompts) == len(pre) == len(post)):
            raise ValueError(f"misaligned inputs: {len(prompts)} prompts, {len(pre)} pre, {len(post)} post")
        rows = []
        for subset in sorted({p.subset for p in prompts}):
            idx = [i for i, p in enumerate(prompts) if p.subset == subset]
            groups = [prompts[i].group for i in idx]
            xa = [float(pre[i]["clip"]) for i in idx]
            xb = [float(post[i]["clip"]) for i in idx]
            a, b = group_mean(groups, xa), group_mean(groups, xb)
            # a caption that names an edited concept should match less after the edit; others should not change
            keep = subset in ("holdout", "edit_dest")

            def stats(v):  # ICEB's mean of per-request means, requests as clusters
                return cluster_stats(v, groups, weighting="groups")

            rows += [MetricValue(subset, "clip_score_pre", a, None, len(idx), keep).with_stats(stats(xa)),
                     MetricValue(subset, "clip_score", b, None, len(idx), keep).with_stats(stats(xb)),
                     # a difference of two means on the same images: the per-image differences' uncertainty
                     MetricValue(subset, "clip_score_delta", b - a, None, len(idx), keep)
                     .with_stats(stats([y - x for x, y in zip(xa, xb)]))]
        return rows


METRICS.register("clip-score", CLIPScore)
