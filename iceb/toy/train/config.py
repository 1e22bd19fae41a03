"""What fixes a toy-world training run: :class:`TrainConfig`, and the default folders."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from iceb.toy import world as W
from iceb.utils.paths import DATA_DIR, REPO_ROOT

TOY_DATA = DATA_DIR / "toy"


DEFAULT_WORK = REPO_ROOT / "runs" / "toy_train"


@dataclass
class TrainConfig:
    """Everything that fixes the trained toy world. ``tiny()`` is a seconds-long variant for tests."""

    seed: int = 0
    world: dict[str, Any] = field(default_factory=dict)  # ToyWorld kwargs (defaults: the shipped world)
    threads: int = 2  # both cores of an idle machine (0.68 vs 1.01 s/step); on an oversubscribed CPU use 1
    # VAE
    vae_steps: int = 400
    vae_batch: int = 32
    vae_lr: float = 2e-3
    vae_block_out: tuple[int, ...] = (16, 32)  # 32 px -> 4x16x16 latents (8x8 latents reconstructed badly)
    latent_channels: int = 4
    # diffusion data
    images_per_concept: int = 160
    # text encoder (other helpers' editor hparams assume exactly this shape)
    text_layers: int = 4
    text_hidden: int = 128
    text_intermediate: int = 512
    text_heads: int = 4
    # text stage (optional; 0 steps = none, the shipped 64-concept recipe): the encoder trained alone on
    # attribute heads, then frozen in the diffusion stage (``freeze_text``); see ``text_stage``
    text_steps: int = 0
    text_batch: int = 256
    text_lr: float = 1e-3
    freeze_text: bool = False
    # bf16 autocast wherever the text encoder runs in training (the ``text`` stage and the caption bank): at
    # Stable Diffusion's widths a 77-token forward of 128 captions takes 4.1 s in fp32, 1.9 s in bf16 (2 cores)
    text_autocast: bool = False
    # with ``freeze_text``: encode this many (caption, image) draws once, and let the diffusion stage draw its
    # batches from them (0 = encode every batch's captions); at SD's widths encoding a batch of 32 captions
    # (0.87 s) would cost more than the UNet's step (0.37 s)
    text_bank: int = 0
    # UNet
    unet_block_out: tuple[int, ...] = (32, 64, 128)
    unet_attention: tuple[bool, ...] = (False, True, True)  # cross-attention at 8x8 and 4x4, not 16x16
    unet_heads: int = 4
    # diffusion training
    steps: int = 3000  # + floor_steps; with the other stages about 45 minutes at 0.48 s a step (idle 2-core CPU)
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 100
    lr_decay_from: int = 100  # constant lr until here, then a cosine down to 10% at ``steps``
    # (a constant 1e-3 until step 2000 left the model noisy: probe accuracy 0.39 at step 2000)
    # more steps at the final (10%) lr after the cosine ends at ``steps``: probe accuracy 0.83 at step 3000,
    # 0.92 at 3800; concept accuracy on the quality seeds 0.883 with 800 floor steps, 0.926 with 1600
    floor_steps: int = 1600
    weight_decay: float = 0.01
    min_snr: float = 5.0
    ema_max: float = 0.998
    empty_caption: float = 0.1
    aux_weight: float = 0.05
    p_primary: float = 0.7  # else a correct alias, or (for concepts that have one) a misunderstood alias
    p_misunderstood: float = 0.12
    checkpoint_every: int = 200
    # VAE and classifier batches draw their concepts from a per-step permutation of the whole world. Off in
    # the shipped 64-concept recipe (kept reproducible): there a batch cycles from concept 0, so the VAE's
    # batches of 32 saw concepts 0-31 only (it generalised: 99% classifier accuracy on reconstructions) and
    # the classifier's 64 saw all. A larger world needs it on: without it a 256-concept classifier trained
    # on batches of 64 learnt concepts 0-63 only (0.25 held-out accuracy, measured).
    shuffle_batches: bool = False
    probe_concepts: int = 0  # probe this many evenly spaced concepts (0 = all)
    probe_every: int = 2000  # quick accuracy probe, one image per concept (64: ~13 s; needs the classifier); 0 = never
    # classifier
    cls_steps: int = 800
    # a second cosine cycle on the same data: 800 steps alone gave 95% on VAE reconstructions, 800 + 700 gave
    # 98.8-99.3% (small shapes blur in the 16x16 latents)
    cls_finetune_steps: int = 1500
    cls_finetune_lr: float = 1e-3
    cls_batch: int = 64
    cls_lr: float = 2e-3
    cls_width: int = 32
    cls_threads: int = 2
    # generation defaults shipped in iceb_model.json
    gen_steps: int = 20
    guidance: float = 5.0  # used when guidance_grid is empty
    # the ``guidance`` stage picks the shipped guidance scale from this grid on seeds that no evaluation uses.
    # Empty by default, to keep the whole run inside 45 minutes: on the 3800-step model the grid 2.5 / 3 / 4 / 5
    # gave 0.918 / 0.902 / 0.910 / 0.918 (256 images each, 142 s), flat within noise, and 5.0 was chosen;
    # (on the older step-4000 model: 0.84 / 0.87 / 0.88 / 0.87 / 0.86 / 0.82 at 2 / 2.5 / 3 / 4 / 5 / 7.5:
    # too strong a guidance oversaturates colours). Set e.g. (2.5, 3.0, 4.0, 5.0) to run it.
    guidance_grid: tuple[float, ...] = ()
    guidance_images: int = 4  # per concept and grid point

    @classmethod
    def tiny(cls) -> "TrainConfig":
        return cls(world={"n_shapes": 2, "n_colours": 2, "misunderstood_every": 2, "prompts_per_concept": 5},
                   vae_steps=3, vae_batch=4, vae_block_out=(8, 16), latent_channels=4, images_per_concept=4,
                   text_layers=1, text_hidden=32, text_intermediate=64, text_heads=2, unet_block_out=(16, 32),
                   unet_attention=(False, True), unet_heads=2, steps=6, floor_steps=0, batch=4,
                   lr=2e-3, warmup=1, checkpoint_every=3, probe_every=0, cls_steps=3, cls_finetune_steps=1,
                   cls_batch=8, cls_width=8, guidance_grid=(), threads=1, cls_threads=1)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown toy training config keys: {unknown}")
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**d)


def make_world(cfg: TrainConfig) -> W.ToyWorld:
    return W.ToyWorld(seed=cfg.seed, **cfg.world)


#: Named training recipes (``iceb toy train --world NAME``): TrainConfig overrides, on which ``--config`` applies.
#: ``toy-1k`` (issue #18) is the recipe the prototypes (``docs/toy_1k_prototype.md``) point to; ``data/toy-1k`` was
#: trained with it (``train_config.json``; 3.6 hours on the 2-core CPU). Its text encoder has Stable Diffusion 1.x's widths, so that 1,000 edits fill the same fractions of
#: the spaces editors write in (MLP keys 3,072 wide, cross-attention keys 768), with 3 layers instead of 12 (the
#: committed weights must stay under 60 MB in fp16); the encoder is trained alone (``text`` stage), then frozen.
WORLD_RECIPES: dict[str, dict[str, Any]] = {
    "toy": {},
    "toy-1k": {
        "world": {"n_shapes": 16, "n_colours": 16, "n_patterns": 6}, "shuffle_batches": True,
        "vae_steps": 6000, "images_per_concept": 64, "cls_steps": 2000, "cls_finetune_steps": 8000,
        "text_layers": 3, "text_hidden": 768, "text_intermediate": 3072, "text_heads": 12,
        "text_steps": 1500, "text_batch": 128, "freeze_text": True, "text_autocast": True, "text_bank": 32768,
        "steps": 9000, "floor_steps": 4000, "probe_every": 1000, "probe_concepts": 256,
    },
}


def recipe(name: str) -> TrainConfig:
    """The TrainConfig of a named recipe (see :data:`WORLD_RECIPES`).

    Args:
        name: ``"toy"`` (the shipped 64-concept world) or ``"toy-1k"``.

    Returns:
        The config.

    Raises:
        KeyError: For an unknown name (with the known ones).
    """
    if name not in WORLD_RECIPES:
        from iceb.utils.registry import closest

        near = closest(name, list(WORLD_RECIPES))
        raise KeyError(f"unknown toy world recipe {name!r}" + (f" (did you mean {near!r}?)" if near else "")
                       + f"; known: {sorted(WORLD_RECIPES)}")
    return TrainConfig.from_json({**TrainConfig().to_json(), **WORLD_RECIPES[name]})

