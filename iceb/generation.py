"""Image generation: one image per (prompt, seed), batched, each with its own generator.

Per-prompt generators make an image depend only on its prompt, seed and settings, never on which other
prompts share its batch, which is what lets pre-edit images be cached and shared by every editor and
edit count. Generators live on the CPU so a seed means the same initial noise on every device.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings. ``height``/``width`` None means the model's default size."""

    height: int | None = None
    width: int | None = None
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    scheduler: str | None = None  # None: the model's own scheduler; else a diffusers scheduler class name
    batch_size: int = 8

    def key(self) -> dict[str, Any]:
        """The settings that change pixels (batch size does not)."""
        d = dataclasses.asdict(self)
        d.pop("batch_size")
        return d

    def replace(self, **changes: Any) -> "GenerationConfig":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


#: ICEB's protocol on Stable Diffusion v1.4 (EMCID: 512 px, 50 steps, default scheduler, guidance 7.5).
ICEB_PROTOCOL = GenerationConfig(height=512, width=512, num_inference_steps=50, guidance_scale=7.5)


def _set_scheduler(pipe, name: str | None) -> None:
    if name is None or type(pipe.scheduler).__name__ == name:
        return
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise ValueError(f"unknown diffusers scheduler {name!r}")
    pipe.scheduler = cls.from_config(pipe.scheduler.config)


def batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


@torch.no_grad()
def generate(pipe, prompts: Sequence[str], seeds: Sequence[int], config: GenerationConfig,
             progress: bool = True, desc: str = "generating") -> list[np.ndarray]:
    """Render one image per (prompt, seed) as uint8 HxWx3 arrays, in input order."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    _set_scheduler(pipe, config.scheduler)
    pipe.set_progress_bar_config(disable=True)
    out: list[np.ndarray] = []
    pairs = list(zip(prompts, seeds))
    bar = tqdm(total=len(pairs), desc=desc, unit="img", disable=not progress or not pairs, leave=False)
    for chunk in batches(pairs, max(1, config.batch_size)):
        gens = [torch.Generator("cpu").manual_seed(int(s)) for _, s in chunk]
        images = pipe(
            [p for p, _ in chunk],
            height=config.height,
            width=config.width,
            num_inference_steps=config.num_inference_steps,
            guidance_scale=config.guidance_scale,
            generator=gens,
            output_type="np",
        ).images
        out.extend((np.clip(images, 0, 1) * 255).round().astype(np.uint8))
        bar.update(len(chunk))
    bar.close()
    return out


def image_key(model_fingerprint: str, prompt: str, seed: int, config: GenerationConfig) -> str:
    """Cache key of one unedited-model image."""
    payload = json.dumps([model_fingerprint, prompt, int(seed), config.key()], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


class ImageCache:
    """Unedited-model images on disk, keyed by (model, prompt, seed, settings); atomic writes."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.png"

    def get(self, key: str) -> np.ndarray | None:
        p = self.path(key)
        if not p.is_file():
            return None
        from PIL import Image

        try:
            with Image.open(p) as im:
                return np.asarray(im.convert("RGB"))
        except OSError:  # a truncated file from a killed process: regenerate
            return None

    def put(self, key: str, image: np.ndarray) -> None:
        from PIL import Image

        from iceb.utils.io import atomic_path

        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(p) as tmp:
            Image.fromarray(image).save(tmp, format="PNG")

    def generate(self, pipe, model_fingerprint: str, prompts: Sequence[str], seeds: Sequence[int],
                 config: GenerationConfig, progress: bool = True) -> list[np.ndarray]:
        """Images for (prompt, seed) pairs, generating only those not cached."""
        keys = [image_key(model_fingerprint, p, s, config) for p, s in zip(prompts, seeds)]
        images: list[np.ndarray | None] = [self.get(k) for k in keys]
        todo = [i for i, im in enumerate(images) if im is None]
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        if todo:
            new = generate(pipe, [prompts[i] for i in todo], [seeds[i] for i in todo], config, progress,
                           desc="pre-edit images")
            for i, im in zip(todo, new):
                self.put(keys[i], im)
                images[i] = im
        return images  # type: ignore[return-value]
