"""Training the toy world's text-to-image model and classifier from scratch, on the CPU, resumably.

Stages (``iceb toy train --stage ...``), each checkpointed in a work folder and resumed when rerun:

1. ``vae``: an AutoencoderKL (32 px -> 4x16x16 latents), L1 + MSE + 1e-6 KL, on renders.
2. ``latents``: render the diffusion training set and encode it once (posterior mean and std).
3. ``classifier``: the toy CNN on fresh renders with blur, colour-gain, noise and VAE reconstructions (before
   the diffusion stage, so that its accuracy probes can score the model while it trains).
4. ``diffusion``: a CLIPTextModel (4 layers, 128 wide) and a UNet2DConditionModel (cross-attention 128)
   trained jointly: DDPM eps-prediction, min-SNR-5 weighting, AdamW with warm-up, grad clip, EMA. A small
   auxiliary linear head on the text encoder's last layer (at the name's last token and at the EOS token)
   predicts the concept the caption's images show; it speeds up the name -> concept binding and is not
   shipped.
5. ``guidance``: the guidance scale shipped with the model, the best of a small grid on held-out seeds.
6. ``export``: the EMA weights as a diffusers folder (weights stored in fp16, loaded as fp32), the
   classifier, the split bundle, the caption corpus and ``train_config.json`` with sha256 of every weight.

Randomness is a function of (seed, stage, step), never of a running RNG, so a resumed run draws the same
batches as an uninterrupted one. Checkpoints are safetensors + JSON (no pickle).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from iceb.utils.download import sha256_file
from iceb.utils.paths import DATA_DIR, REPO_ROOT
from iceb.toy import world as W

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
    probe_every: int = 2000  # quick accuracy probe on 64 images, ~13 s (needs the classifier); 0 = never
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
        return cls(world=dict(n_shapes=2, n_colours=2, misunderstood_every=2, prompts_per_concept=5),
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


# The seed derivations below are frozen derivation, not :func:`iceb.utils.hashing.seed_from`: the shipped toy model was built with these exact seeds;
# changing them would change the toy training numerics.
def _gen(cfg: TrainConfig, stage: str, step: int) -> torch.Generator:
    digest = hashlib.sha256(f"{cfg.seed}|{stage}|{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:7], "little"))


def _rng(cfg: TrainConfig, stage: str, step: int) -> random.Random:
    digest = hashlib.sha256(f"{cfg.seed}|{stage}|{step}|py".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def _to_unit(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _from_unit(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


# --------------------------------------------------------------------------------------------------
# checkpoints: tensors in safetensors, the rest in JSON
# --------------------------------------------------------------------------------------------------
def _save_ckpt(path: Path, modules: dict[str, nn.Module], opt: torch.optim.Optimizer | None,
               meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    from iceb.utils.io import atomic_path

    tensors: dict[str, torch.Tensor] = {}
    for name, m in modules.items():
        for k, v in m.state_dict().items():
            tensors[f"{name}.{k}"] = v.detach().contiguous().clone()
    if opt is not None:
        for i, st in opt.state_dict()["state"].items():
            for k, v in st.items():
                tensors[f"opt.{i}.{k}"] = torch.as_tensor(v).contiguous().clone()
    with atomic_path(path.with_suffix(".safetensors")) as tmp:
        save_file(tensors, str(tmp))
    with atomic_path(path.with_suffix(".json")) as tmp:
        Path(tmp).write_text(json.dumps(meta, indent=1))


def _load_ckpt(path: Path, modules: dict[str, nn.Module], opt: torch.optim.Optimizer | None) -> dict[str, Any] | None:
    from safetensors.torch import load_file

    if not path.with_suffix(".json").is_file() or not path.with_suffix(".safetensors").is_file():
        return None
    tensors = load_file(str(path.with_suffix(".safetensors")))
    for name, m in modules.items():
        pre = f"{name}."
        m.load_state_dict({k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)})
    if opt is not None:
        sd = opt.state_dict()
        state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, i, key = k.split(".", 2)
                state.setdefault(int(i), {})[key] = v
        sd["state"] = state
        opt.load_state_dict(sd)
    return json.loads(path.with_suffix(".json").read_text())


# --------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------
def build_vae(cfg: TrainConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_block_out)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=cfg.latent_channels, layers_per_block=1,
                         block_out_channels=cfg.vae_block_out, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, norm_num_groups=min(8, cfg.vae_block_out[0]),
                         sample_size=W.IMAGE_SIZE)


def build_text_encoder(cfg: TrainConfig, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_hidden, intermediate_size=cfg.text_intermediate,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads, max_position_embeddings=77,
        projection_dim=cfg.text_hidden, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))


def build_unet(cfg: TrainConfig):
    from diffusers import UNet2DConditionModel

    if len(cfg.unet_attention) != len(cfg.unet_block_out):
        raise ValueError("unet_attention needs one flag per unet_block_out level")
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.unet_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.unet_attention))
    latent = W.IMAGE_SIZE // 2 ** (len(cfg.vae_block_out) - 1)
    return UNet2DConditionModel(sample_size=latent, in_channels=cfg.latent_channels,
                                out_channels=cfg.latent_channels, layers_per_block=1,
                                block_out_channels=cfg.unet_block_out, down_block_types=down, up_block_types=up,
                                cross_attention_dim=cfg.text_hidden, attention_head_dim=cfg.unet_heads,
                                norm_num_groups=min(16, cfg.unet_block_out[0]))


def train_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                         beta_end=0.012, clip_sample=False)


def sample_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                         beta_end=0.012, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


# --------------------------------------------------------------------------------------------------
# stage 1: VAE
# --------------------------------------------------------------------------------------------------
def _renders(world: W.ToyWorld, n: int, seed: int) -> np.ndarray:
    return W.render_many(world, W.random_specs(world, n, seed))


def train_vae(cfg: TrainConfig, work: Path, log=print) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    world = make_world(cfg)
    ckpt = work / "vae_ckpt"
    torch.manual_seed(cfg.seed)
    vae = build_vae(cfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    meta = _load_ckpt(ckpt, {"vae": vae}, opt) or {"step": 0, "seconds": 0.0}
    if meta["step"] >= cfg.vae_steps:
        return meta
    vae.train()
    bar = tqdm(range(meta["step"], cfg.vae_steps), desc="vae", initial=meta["step"], total=cfg.vae_steps)
    t0, losses = time.time(), []
    for step in bar:
        x = _to_unit(_renders(world, cfg.vae_batch, seed=hash_seed(cfg, "vae-data", step)))
        lr = cfg.vae_lr * min(1.0, (step + 1) / 50) * (0.5 * (1 + math.cos(math.pi * step / cfg.vae_steps)) * 0.9 + 0.1)
        for g in opt.param_groups:
            g["lr"] = lr
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=_gen(cfg, "vae-z", step))
        rec = vae.decode(z).sample
        loss = (rec - x).abs().mean() + ((rec - x) ** 2).mean() + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.vae_steps:
            meta = {"step": step + 1, "seconds": meta["seconds"] + time.time() - t0,
                    "loss": float(np.mean(losses[-20:]))}
            t0 = time.time()
            _save_ckpt(ckpt, {"vae": vae}, opt, meta)
    log(f"vae: {meta['step']} steps, {meta['seconds']:.0f} s, loss {meta.get('loss')}")
    return meta


def hash_seed(cfg: TrainConfig, stage: str, step: int) -> int:
    """A 32-bit seed of (cfg.seed, stage, step); a frozen derivation like :func:`_gen`'s."""
    return int.from_bytes(hashlib.sha256(f"{cfg.seed}|{stage}|{step}|s".encode()).digest()[:4], "little")


def load_vae(cfg: TrainConfig, work: Path):
    vae = build_vae(cfg)
    if _load_ckpt(work / "vae_ckpt", {"vae": vae}, None) is None:
        raise FileNotFoundError(f"no VAE checkpoint in {work}; run the 'vae' stage first")
    return vae.eval()


# --------------------------------------------------------------------------------------------------
# stage 2: the diffusion training set, encoded once
# --------------------------------------------------------------------------------------------------
CONTEXT_FIELDS = ("position", "size", "background")


def encode_latents(cfg: TrainConfig, work: Path, log=print) -> dict[str, Any]:
    from safetensors.torch import save_file

    from iceb.utils.io import atomic_path

    out = work / "latents.safetensors"
    if out.is_file():
        return {"path": str(out)}
    torch.set_num_threads(cfg.threads)
    world = make_world(cfg)
    vae = load_vae(cfg, work)
    n = cfg.images_per_concept * len(world)
    specs = W.random_specs(world, n, seed=hash_seed(cfg, "diffusion-data", 0))
    t0 = time.time()
    means, stds = [], []
    with torch.no_grad():
        for i in tqdm(range(0, n, 256), desc="encode latents"):
            x = _to_unit(W.render_many(world, specs[i:i + 256]))
            post = vae.encode(x).latent_dist
            means.append(post.mean)
            stds.append(post.std)
    mean, std = torch.cat(means), torch.cat(stds)
    scaling = float(1.0 / mean.std())
    attrs = torch.tensor([[sp.concept_id, W.POSITIONS.index(sp.position), W.SIZES.index(sp.size),
                           W.BACKGROUNDS.index(sp.background)] for sp in specs], dtype=torch.int64)
    with atomic_path(out) as tmp:
        save_file({"mean": mean.contiguous(), "std": std.contiguous(), "attrs": attrs,
                   "scaling": torch.tensor([scaling])}, str(tmp))
    log(f"latents: {n} images encoded in {time.time() - t0:.0f} s, scaling factor {scaling:.4f}")
    return {"path": str(out), "seconds": time.time() - t0, "scaling_factor": scaling}


# --------------------------------------------------------------------------------------------------
# stage 3: diffusion (text encoder + UNet)
# --------------------------------------------------------------------------------------------------
class CaptionSampler:
    """Draws (caption, image index, concept the image shows) consistent with the images' context."""

    def __init__(self, world: W.ToyWorld, attrs: torch.Tensor, cfg: TrainConfig) -> None:
        self.world, self.cfg = world, cfg
        self.cells: dict[tuple[int, int, int, int], list[int]] = {}
        for i, row in enumerate(attrs.tolist()):
            self.cells.setdefault(tuple(row), []).append(i)
        self.n = len(attrs)
        # words trained with each concept's images: primary, correct aliases, misunderstood aliases of others
        self.primary = {c.id: c.name for c in world.concepts}
        self.aliases = {c.id: list(c.aliases) for c in world.concepts}
        self.misunderstood: dict[int, list[str]] = {}
        for c in world.concepts:
            for a in c.misunderstood:
                self.misunderstood.setdefault(c.misunderstood_as, []).append(a)

    def draw(self, rng: random.Random) -> tuple[str, int, int, str | None]:
        """(caption, image index, image concept id, the name word or None for an empty caption)."""
        if rng.random() < self.cfg.empty_caption:
            i = rng.randrange(self.n)
            return "", i, -1, None
        cid = rng.randrange(len(self.world))
        r = rng.random()
        if self.misunderstood.get(cid) and r < self.cfg.p_misunderstood:
            word = rng.choice(self.misunderstood[cid])
        elif r < self.cfg.p_misunderstood + self.cfg.p_primary or not self.aliases[cid]:
            word = self.primary[cid]
        else:
            word = rng.choice(self.aliases[cid])
        caption, ctx = self.world.sample_caption(rng, word)
        want = (ctx.position, ctx.size, ctx.background)
        keys = [k for k in self.cells if k[0] == cid and all(
            w is None or getattr(W, f.upper() + "S")[k[j + 1]] == w
            for j, (f, w) in enumerate(zip(("position", "size", "background"), want)))]
        if not keys:  # cannot happen with enough images per concept; fall back to any image of the concept
            keys = [k for k in self.cells if k[0] == cid]
        cell = self.cells[rng.choice(keys)]
        return caption, rng.choice(cell), cid, word


def name_end_position(tokenizer, caption: str, word: str) -> int:
    """Index (in the 77-token sequence, BOS = 0) of the word's last token."""
    end = caption.index(word) + len(word)
    return _token_count(tokenizer, caption[:end])


@lru_cache(maxsize=200_000)
def _token_count_cached(tok_id: int, text: str) -> int:
    return len(_TOKENIZERS[tok_id](text).input_ids) - 2  # without BOS/EOS: the last word token's index


_TOKENIZERS: dict[int, Any] = {}


def _token_count(tokenizer, text: str) -> int:
    _TOKENIZERS[id(tokenizer)] = tokenizer
    return _token_count_cached(id(tokenizer), text)


class EMA:
    """Exponential moving average of a module's float tensors (decay warms up as (1+t)/(10+t))."""

    def __init__(self, module: nn.Module, max_decay: float) -> None:
        self.max_decay = max_decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}
        self._live: tuple[list[torch.Tensor], ...] | None = None
        self._module_id: int | None = None

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        d = min(self.max_decay, (1 + step) / (10 + step))
        if self._module_id != id(module):
            # state_dict() views share storage with the parameters, which the optimizer updates in place, so
            # they are gathered once; one foreach lerp over ~200 tensors replaces a Python loop (15 -> 5 ms)
            sd = module.state_dict()
            fl = [k for k, v in sd.items() if v.dtype.is_floating_point]
            other = [k for k, v in sd.items() if not v.dtype.is_floating_point]
            self._live = ([self.shadow[k] for k in fl], [sd[k] for k in fl],
                          [self.shadow[k] for k in other], [sd[k] for k in other])
            self._module_id = id(module)
        shadow_f, live_f, shadow_o, live_o = self._live
        torch._foreach_lerp_(shadow_f, live_f, 1 - d)
        for s, v in zip(shadow_o, live_o):
            s.copy_(v)

    def state_for_ckpt(self) -> nn.Module:
        return _DictModule(self.shadow)


class _DictModule(nn.Module):
    """Wraps a dict of tensors so that the checkpoint helpers can save and load it in place."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self._t = tensors

    def state_dict(self, *a, **k):  # type: ignore[override]
        return dict(self._t)

    def load_state_dict(self, sd, strict: bool = True):  # type: ignore[override]
        missing = set(self._t) - set(sd)
        if strict and missing:
            raise KeyError(f"EMA checkpoint lacks {sorted(missing)[:3]}")
        for k, v in sd.items():
            self._t[k].copy_(v)


def train_diffusion(cfg: TrainConfig, work: Path, log=print, max_seconds: float | None = None) -> dict[str, Any]:
    from safetensors.torch import load_file

    from iceb.data.tokenizer import load_clip_tokenizer

    torch.set_num_threads(cfg.threads)
    world = make_world(cfg)
    data = load_file(str(work / "latents.safetensors"))
    scaling = float(data["scaling"][0])
    tokenizer = load_clip_tokenizer()
    torch.manual_seed(cfg.seed)
    text_encoder = build_text_encoder(cfg, tokenizer)
    unet = build_unet(cfg)
    aux = nn.Linear(cfg.text_hidden, len(world))
    params = list(text_encoder.parameters()) + list(unet.parameters()) + list(aux.parameters())
    # fused: one kernel over all 11M parameters (9 ms instead of 47 ms a step on 2 threads)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    ema_te, ema_unet = EMA(text_encoder, cfg.ema_max), EMA(unet, cfg.ema_max)
    ckpt = work / "diffusion_ckpt"
    modules = {"text_encoder": text_encoder, "unet": unet, "aux": aux, "ema_te": ema_te.state_for_ckpt(),
               "ema_unet": ema_unet.state_for_ckpt()}
    meta = _load_ckpt(ckpt, modules, opt) or {"step": 0, "seconds": 0.0, "history": []}
    total = cfg.steps + cfg.floor_steps
    if meta["step"] >= total:
        return meta
    sampler = CaptionSampler(world, data["attrs"], cfg)
    noise_sched = train_scheduler()
    alphas = noise_sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    text_encoder.train()
    unet.train()
    bar = tqdm(range(meta["step"], total), desc="diffusion", initial=meta["step"], total=total)
    t0, losses, aux_acc = time.time(), [], []
    start_wall = time.time()
    for step in bar:
        rng, gen = _rng(cfg, "diffusion", step), _gen(cfg, "diffusion", step)
        draws = [sampler.draw(rng) for _ in range(cfg.batch)]
        captions = [d[0] for d in draws]
        idx = torch.tensor([d[1] for d in draws])
        ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True,
                        return_tensors="pt").input_ids
        z0 = (data["mean"][idx] + data["std"][idx] * torch.randn(data["mean"][idx].shape, generator=gen)) * scaling
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, 1000, (cfg.batch,), generator=gen)
        zt = noise_sched.add_noise(z0, noise, t)
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup)
        if step >= cfg.lr_decay_from and cfg.steps > cfg.lr_decay_from:
            frac = min(1.0, (step - cfg.lr_decay_from) / (cfg.steps - cfg.lr_decay_from))
            lr *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))
        for g in opt.param_groups:
            g["lr"] = lr
        out = text_encoder(ids)
        hidden = out.last_hidden_state
        pred = unet(zt, t, encoder_hidden_states=hidden).sample
        w = torch.clamp(snr[t], max=cfg.min_snr) / snr[t]
        loss_mse = (((pred - noise) ** 2).mean((1, 2, 3)) * w).mean()
        # auxiliary: the concept the images show, read at the name's last token and at EOS
        rows = [i for i, d in enumerate(draws) if d[3] is not None]
        loss = loss_mse
        if rows and cfg.aux_weight > 0:
            name_pos = torch.tensor([name_end_position(tokenizer, draws[i][0], draws[i][3]) for i in rows])
            eos_pos = (ids[rows] == tokenizer.eos_token_id).int().argmax(-1)
            target = torch.tensor([draws[i][2] for i in rows])
            rr = torch.tensor(rows)
            logits_name = aux(hidden[rr, name_pos])
            logits_eos = aux(hidden[rr, eos_pos])
            loss = loss + cfg.aux_weight * (nn.functional.cross_entropy(logits_name, target)
                                            + nn.functional.cross_entropy(logits_eos, target))
            aux_acc.append(float((logits_name.argmax(-1) == target).float().mean()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_te.update(text_encoder, step)
        ema_unet.update(unet, step)
        losses.append(loss_mse.item())
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", aux=f"{np.mean(aux_acc[-50:] or [0]):.2f}")
        done = step + 1
        stop = max_seconds is not None and time.time() - start_wall > max_seconds
        if done % cfg.checkpoint_every == 0 or done == total or stop:
            meta["seconds"] += time.time() - t0
            t0 = time.time()
            meta["step"] = done
            meta["history"].append({"step": done, "loss": float(np.mean(losses[-50:])),
                                    "aux_acc": float(np.mean(aux_acc[-50:] or [0])), "seconds": meta["seconds"]})
            meta["scaling_factor"] = scaling
            _save_ckpt(ckpt, modules, opt, meta)
            if cfg.probe_every and (done % cfg.probe_every == 0 or done == total):
                probe = quick_probe(cfg, work, ema_te, ema_unet, tokenizer, scaling)
                if probe is not None:
                    meta["history"][-1]["probe_acc"] = probe
                    log(f"step {done}: probe concept accuracy {probe:.3f} (64 images, EMA weights)")
                    _save_ckpt(ckpt, modules, opt, meta)
                t0 = time.time()
        if stop:
            log(f"diffusion: stopped after {max_seconds} s at step {done}; rerun to resume")
            break
    log(f"diffusion: {meta['step']} steps, {meta['seconds']:.0f} s of training")
    return meta


def _assemble(tokenizer, text_encoder, unet, vae, scaling: float):
    """A StableDiffusionPipeline (DDIM, no safety checker) of the given modules, in eval mode."""
    from diffusers import StableDiffusionPipeline

    vae.register_to_config(scaling_factor=scaling)
    for m in (text_encoder, unet, vae):
        m.eval()
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=sample_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def _work_classifier(work: Path):
    from iceb.toy.classifier import ToyClassifier

    return ToyClassifier(weights=work / "classifier.safetensors", config=work / "classifier.json")


def _concept_accuracy(cfg: TrainConfig, pipe, clf, prompts: list[str], seeds: list[int], true: list[int],
                      guidance: float, **gen_kw: Any) -> float:
    """Top-1 concept accuracy of ``pipe``'s images of ``prompts`` under the toy classifier."""
    from iceb.generation import GenerationConfig, generate

    images = generate(pipe, prompts, seeds, GenerationConfig(32, 32, cfg.gen_steps, guidance, None, 64), **gen_kw)
    return float(np.mean(clf.predict_proba(images).argmax(-1) == np.array(true)))


def build_pipeline(cfg: TrainConfig, work: Path, ema: bool = True):
    """The StableDiffusionPipeline from the checkpoints (EMA weights by default)."""
    from safetensors.torch import load_file

    from iceb.data.tokenizer import load_clip_tokenizer

    tokenizer = load_clip_tokenizer()
    text_encoder, unet, vae = build_text_encoder(cfg, tokenizer), build_unet(cfg), load_vae(cfg, work)
    tensors = load_file(str((work / "diffusion_ckpt").with_suffix(".safetensors")))
    meta = json.loads((work / "diffusion_ckpt").with_suffix(".json").read_text())
    for name, module in (("text_encoder", text_encoder), ("unet", unet)):
        pre = {"text_encoder": "ema_te.", "unet": "ema_unet."}[name] if ema else f"{name}."
        module.load_state_dict({k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)})
    return _assemble(tokenizer, text_encoder, unet, vae, float(meta["scaling_factor"]))


@torch.no_grad()
def quick_probe(cfg: TrainConfig, work: Path, ema_te: EMA, ema_unet: EMA, tokenizer, scaling: float) -> float | None:
    """Concept accuracy of 64 images ('A photo of {name}', one per concept) from the EMA weights."""
    if not (work / "classifier.safetensors").is_file():
        return None
    world = make_world(cfg)
    te, unet, vae = build_text_encoder(cfg, tokenizer), build_unet(cfg), load_vae(cfg, work)
    te.load_state_dict(ema_te.shadow)
    unet.load_state_dict(ema_unet.shadow)
    pipe = _assemble(tokenizer, te, unet, vae, scaling)
    return _concept_accuracy(cfg, pipe, _work_classifier(work), [f"A photo of {c.name}" for c in world.concepts],
                             [1000 + c.id for c in world.concepts], [c.id for c in world.concepts], cfg.guidance,
                             progress=False)


# --------------------------------------------------------------------------------------------------
# stage 4: classifier
# --------------------------------------------------------------------------------------------------
def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur, per-channel colour gain, brightness shift and pixel noise, each per image ([-1, 1] input)."""
    n = x.shape[0]
    u = lambda *s: torch.rand(*s, generator=gen)  # noqa: E731
    # blur: mix with a 3x3 box blur by a random amount
    k = torch.ones(3, 1, 3, 3) / 9
    blurred = nn.functional.conv2d(nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=3)
    a = u(n, 1, 1, 1) * (u(n, 1, 1, 1) < 0.5)
    x = x * (1 - a) + blurred * a
    unit = (x + 1) / 2
    unit = unit * (0.85 + 0.3 * u(n, 3, 1, 1)) + (u(n, 1, 1, 1) - 0.5) * 0.1
    unit = unit + torch.randn(unit.shape, generator=gen) * (u(n, 1, 1, 1) * 0.04)
    return unit.clamp(0, 1) * 2 - 1


def _labels(world: W.ToyWorld, specs: list[W.RenderSpec]) -> dict[str, torch.Tensor]:
    return {"concept": torch.tensor([s.concept_id for s in specs]),
            "position": torch.tensor([W.POSITIONS.index(s.position) for s in specs]),
            "size": torch.tensor([W.SIZES.index(s.size) for s in specs]),
            "background": torch.tensor([W.BACKGROUNDS.index(s.background) for s in specs])}


def train_classifier(cfg: TrainConfig, work: Path, log=print) -> dict[str, Any]:
    from iceb.toy.classifier import ToyNet, save_classifier

    torch.set_num_threads(cfg.cls_threads)
    world = make_world(cfg)
    vae = load_vae(cfg, work)
    torch.manual_seed(cfg.seed + 1)
    net = ToyNet(num_classes=len(world), width=cfg.cls_width)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.cls_lr, weight_decay=1e-4)
    ckpt = work / "classifier_ckpt"
    meta = _load_ckpt(ckpt, {"net": net}, opt) or {"step": 0, "seconds": 0.0}
    net.train()
    t0, losses = time.time(), []
    total = cfg.cls_steps + cfg.cls_finetune_steps
    bar = tqdm(range(meta["step"], total), desc="classifier", initial=meta["step"], total=total)
    for step in bar:
        gen = _gen(cfg, "classifier", step)
        specs = W.random_specs(world, cfg.cls_batch, seed=hash_seed(cfg, "classifier-data", step))
        rng = random.Random(hash_seed(cfg, "classifier-order", step))
        rng.shuffle(specs)
        x = _to_unit(W.render_many(world, specs))
        if step >= cfg.cls_steps // 4:  # after a clean warm-up: half the batch through the VAE
            h = cfg.cls_batch // 2
            with torch.no_grad():
                post = vae.encode(x[:h]).latent_dist
                z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
                x[:h] = vae.decode(z).sample.clamp(-1, 1)
            x = augment(x, gen)
        labels = _labels(world, specs)
        if step < cfg.cls_steps:
            lr = cfg.cls_lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / cfg.cls_steps))
        else:
            k = step - cfg.cls_steps
            lr = cfg.cls_finetune_lr * 0.5 * (1 + math.cos(math.pi * k / cfg.cls_finetune_steps))
        for g in opt.param_groups:
            g["lr"] = lr
        out = net(x)
        loss = sum(nn.functional.cross_entropy(out[k], labels[k]) * (1.0 if k == "concept" else 0.5) for k in out)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 in (cfg.cls_steps, total):
            meta = {"step": step + 1, "seconds": meta["seconds"] + time.time() - t0,
                    "loss": float(np.mean(losses[-20:]))}
            t0 = time.time()
            _save_ckpt(ckpt, {"net": net}, opt, meta)
    net.eval()
    config = {"num_classes": len(world), "width": cfg.cls_width, "world": "toy", "world_config": make_world(cfg).config,
              "input": "uint8 RGB 32x32, scaled to [-1, 1]", "heads": ["concept", "position", "size", "background"],
              "positions": list(W.POSITIONS), "sizes": list(W.SIZES), "backgrounds": list(W.BACKGROUNDS)}
    save_classifier(net, config, work / "classifier.safetensors", work / "classifier.json")
    meta["accuracy"] = classifier_accuracy(cfg, work, vae=vae)
    _save_ckpt(ckpt, {"net": net}, opt, meta)
    log(f"classifier: {meta['step']} steps, {meta['seconds']:.0f} s, accuracy {meta['accuracy']}")
    return meta


@torch.no_grad()
def classifier_accuracy(cfg: TrainConfig, work: Path, n: int = 1024, vae=None) -> dict[str, float]:
    """Held-out accuracy (seeds never used in training) on clean renders and on VAE reconstructions."""
    world = make_world(cfg)
    vae = vae if vae is not None else load_vae(cfg, work)
    specs = W.random_specs(world, n, seed=hash_seed(cfg, "classifier-test", 0))
    images = W.render_many(world, specs)
    x = _to_unit(images)
    recon = np.concatenate([_from_unit(vae.decode(vae.encode(x[i:i + 256]).latent_dist.mean).sample)
                            for i in range(0, n, 256)])
    clf = _work_classifier(work)
    labels = {k: v.numpy() for k, v in _labels(world, specs).items()}
    res: dict[str, float] = {"n": n}
    for tag, ims in (("clean", images), ("vae", recon)):
        probs = clf.predict_all(list(ims))
        for k, p in probs.items():
            res[f"{tag}_{k}"] = float(np.mean(p.argmax(-1) == labels[k]))
    return res


# --------------------------------------------------------------------------------------------------
# stage 5: guidance scale
# --------------------------------------------------------------------------------------------------
GUIDANCE_SEED = 900_000  # seeds 900000 + 100 * concept + k: disjoint from the quality and task seeds


@torch.no_grad()
def tune_guidance(cfg: TrainConfig, work: Path, log=print) -> dict[str, Any]:
    """Concept accuracy of the EMA model per guidance scale in ``guidance_grid``; the best is shipped."""
    from iceb.utils.io import write_json

    out = work / "guidance.json"
    if out.is_file():
        return json.loads(out.read_text())
    if not cfg.guidance_grid:
        return {"chosen": cfg.guidance, "accuracy": {}}
    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    world = make_world(cfg)
    pipe = build_pipeline(cfg, work)
    clf = _work_classifier(work)
    prompts, seeds, true = [], [], []
    for c in world.concepts:
        for k in range(cfg.guidance_images):
            prompts.append(W.EDIT_TEMPLATES[k % len(W.EDIT_TEMPLATES)].format(c.name))
            seeds.append(GUIDANCE_SEED + 100 * c.id + k)
            true.append(c.id)
    acc: dict[str, float] = {}
    for g in cfg.guidance_grid:
        acc[str(g)] = _concept_accuracy(cfg, pipe, clf, prompts, seeds, true, g, desc=f"guidance {g}")
    chosen = float(max(cfg.guidance_grid, key=lambda g: (acc[str(g)], -abs(g - cfg.guidance))))
    result = {"chosen": chosen, "accuracy": acc, "images": len(prompts), "seconds": time.time() - t0,
              "seeds": f"{GUIDANCE_SEED} + 100 * concept id + k"}
    write_json(out, result)
    log(f"guidance: {acc} -> {chosen}")
    return result


def shipped_guidance(cfg: TrainConfig, work: Path) -> float:
    p = work / "guidance.json"
    return float(json.loads(p.read_text())["chosen"]) if p.is_file() else cfg.guidance


# --------------------------------------------------------------------------------------------------
# stage 6: export
# --------------------------------------------------------------------------------------------------


def export(cfg: TrainConfig, work: Path, out: Path = TOY_DATA, log=print, timings: dict | None = None,
           note: str | None = None) -> dict:
    """Write the diffusers folder (fp16 weights), classifier, split, captions and train_config.json."""
    import shutil

    from iceb.toy.split import build_split

    world = make_world(cfg)
    pipe = build_pipeline(cfg, work)
    model_dir = out / "model"
    tmp_dir = out / ".model.tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    pipe.to(dtype=torch.float16)
    pipe.save_pretrained(tmp_dir, safe_serialization=True)
    info = {"family": "toy", "world": "toy", "classifier": "toy", "model_id": "iceb/toy-world",
            "world_config": world.config,
            "generation": {"height": 32, "width": 32, "num_inference_steps": cfg.gen_steps,
                           "guidance_scale": shipped_guidance(cfg, work), "scheduler": None, "batch_size": 64},
            "note": "weights are stored in float16 to keep the folder small; load them as float32 "
                    "(iceb.models.load_model does) - the stored values are exactly what was evaluated"}
    (tmp_dir / "iceb_model.json").write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(model_dir, ignore_errors=True)
    tmp_dir.rename(model_dir)
    for f in ("classifier.safetensors", "classifier.json"):
        shutil.copyfile(work / f, out / f)
    split = build_split(world)
    split.save(out / "split.json")
    (out / "captions.txt").write_text("\n".join(world.caption_corpus(4000, seed=cfg.seed + 7)) + "\n")
    weights = sorted(p for p in out.rglob("*.safetensors"))
    stage_meta = {}
    for stage in ("vae", "diffusion", "classifier"):
        p = (work / f"{stage}_ckpt").with_suffix(".json")
        if p.is_file():
            m = json.loads(p.read_text())
            stage_meta[stage] = {k: v for k, v in m.items() if k != "history"}
            if "history" in m:
                stage_meta[stage]["history"] = m["history"]
    if (work / "guidance.json").is_file():
        stage_meta["guidance"] = json.loads((work / "guidance.json").read_text())
    record = {
        "config": cfg.to_json(),
        "world_config": world.config,
        "stages": stage_meta,
        "timings": timings or {},
        "torch": torch.__version__,
        "threads": cfg.threads,
        "cpu_count": os.cpu_count(),
        "weights_sha256": {str(p.relative_to(out)): sha256_file(p) for p in weights},
        "weights_bytes": {str(p.relative_to(out)): p.stat().st_size for p in weights},
        "split_sha256": sha256_file(out / "split.json"),
        "storage": "model weights in float16 safetensors (cast from the float32 EMA weights); loaded as float32",
        "note": note,
    }
    (out / "train_config.json").write_text(json.dumps(record, indent=2) + "\n")
    total = sum(record["weights_bytes"].values())
    log(f"exported to {out}: {total / 1e6:.1f} MB of weights")
    return record


def train_all(cfg: TrainConfig, work: Path = DEFAULT_WORK, out: Path = TOY_DATA, stages: tuple[str, ...] = (
        "vae", "latents", "classifier", "diffusion", "guidance", "export"), log=print, max_seconds: float | None = None,
        note: str | None = None) -> dict:
    """Run the given stages in order, resuming each from its checkpoint."""
    work.mkdir(parents=True, exist_ok=True)
    cfg_path = work / "config.json"
    if cfg_path.is_file():
        saved = TrainConfig.from_json(json.loads(cfg_path.read_text()))
        if saved != cfg:
            raise ValueError(f"{work} holds a run with another config; use another --work folder or delete it")
    else:
        cfg_path.write_text(json.dumps(cfg.to_json(), indent=1))
    timings: dict[str, float] = {}
    result: dict[str, Any] = {}
    for stage in stages:
        t = time.time()
        if stage == "vae":
            result[stage] = train_vae(cfg, work, log)
        elif stage == "latents":
            result[stage] = encode_latents(cfg, work, log)
        elif stage == "diffusion":
            result[stage] = train_diffusion(cfg, work, log, max_seconds=max_seconds)
        elif stage == "classifier":
            result[stage] = train_classifier(cfg, work, log)
        elif stage == "guidance":
            result[stage] = tune_guidance(cfg, work, log)
        elif stage == "export":
            result[stage] = export(cfg, work, out, log, timings, note)
        else:
            raise ValueError(f"unknown stage {stage!r}")
        timings[stage] = time.time() - t
    return result
