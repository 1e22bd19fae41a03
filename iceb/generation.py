"""Image generation: one image per (prompt, seed), batched, each with its own generator.

Per-prompt generators make an image depend only on its prompt, seed and settings, never on which other
prompts share its batch, which is what lets pre-edit images be cached and shared by every editor and
edit count. Generators live on the CPU so a seed means the same initial noise on every device.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from iceb.utils.cache import PNG, ContentCache
from iceb.utils.hashing import stable_hash


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
    """Render one image per (prompt, seed) as uint8 HxWx3 arrays, in input order.

    Each image has its own CPU generator seeded with its seed, so it does not depend on its batch or device
    (see the module docstring).

    Args:
        pipe: A diffusers text-to-image pipeline (e.g. ``load_model(...).pipe``).
        prompts: The prompts, one image each.
        seeds: One seed per prompt.
        config: The sampling settings; ``config.batch_size`` images go through the pipeline at a time.
        progress: Show a progress bar.
        desc: The progress bar's label.

    Returns:
        One ``uint8`` array of shape ``(height, width, 3)`` per prompt, in input order.

    Raises:
        ValueError: ``prompts`` and ``seeds`` differ in length, or ``config.scheduler`` names no diffusers
            scheduler.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    return _render(pipe, list(prompts), seeds, config, progress, desc, lambda chunk: {"prompt": list(chunk)})


@torch.no_grad()
def generate_ids(pipe, token_ids: Sequence[Sequence[int]], seeds: Sequence[int], config: GenerationConfig,
                 progress: bool = False, desc: str = "generating") -> list[np.ndarray]:
    """Render one image per (token-id sequence, seed): :func:`generate` for prompts given as the tokenizer's
    ids (padded to its ``model_max_length``), e.g. an attack's adversarial tokens, which need not survive a
    decode and re-tokenize. ``generate_ids(pipe, [tokenize(p)], ...)`` equals ``generate(pipe, [p], ...)``.

    Args:
        pipe: A diffusers text-to-image pipeline with ``text_encoder`` (prompt embeddings are its last hidden state).
        token_ids: One full-length id sequence per image.
        seeds: One seed per image.
        config: The sampling settings.
        progress: Show a progress bar.
        desc: The progress bar's label.

    Returns:
        One ``uint8`` array of shape ``(height, width, 3)`` per sequence, in input order.
    """
    if len(token_ids) != len(seeds):
        raise ValueError(f"{len(token_ids)} token sequences but {len(seeds)} seeds")
    enc = pipe.text_encoder

    def kwargs(chunk):
        ids = torch.tensor([list(map(int, t)) for t in chunk], dtype=torch.long, device=enc.device)
        return {"prompt_embeds": enc(ids)[0].to(pipe.unet.dtype)}

    return _render(pipe, list(token_ids), seeds, config, progress, desc, kwargs)


def _render(pipe, items: list, seeds: Sequence[int], config: GenerationConfig, progress: bool, desc: str,
            inputs) -> list[np.ndarray]:
    """The one batched sampling loop: ``inputs(chunk)`` gives the pipeline's prompt arguments of a chunk."""
    _set_scheduler(pipe, config.scheduler)
    pipe.set_progress_bar_config(disable=True)
    out: list[np.ndarray] = []
    pairs = list(zip(items, seeds))
    bar = tqdm(total=len(pairs), desc=desc, unit="img", disable=not progress or not pairs, leave=False)
    for chunk in batches(pairs, max(1, config.batch_size)):
        gens = [torch.Generator("cpu").manual_seed(int(s)) for _, s in chunk]
        images = pipe(
            **inputs([x for x, _ in chunk]),
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
    """Cache key of one unedited-model image (the same in every process)."""
    return stable_hash("image", model_fingerprint, prompt, int(seed), config.key())


class ImageCache(ContentCache):
    """Unedited-model images on disk (``<root>/<key[:2]>/<key>.png``), keyed by (model, prompt, seed, settings):
    the content cache with the PNG codec. A truncated PNG is a miss (warned about, removed, regenerated)."""

    def __init__(self, root: str | Path):
        super().__init__(root, "images", PNG)

    def generate(self, pipe, model_fingerprint: str, prompts: Sequence[str], seeds: Sequence[int],
                 config: GenerationConfig, progress: bool = True) -> list[np.ndarray]:
        """Images for (prompt, seed) pairs, generating only those not cached."""
        keys = [image_key(model_fingerprint, p, s, config) for p, s in zip(prompts, seeds)]
        images: list[np.ndarray | None] = [self.get(k) for k in keys]  # counts hits and misses
        todo = [i for i, im in enumerate(images) if im is None]
        if todo:
            new = generate(pipe, [prompts[i] for i in todo], [seeds[i] for i in todo], config, progress,
                           desc="pre-edit images")
            for i, im in zip(todo, new):
                self.put(keys[i], im)
                images[i] = im
        return images  # type: ignore[return-value]
