"""Stage 1, ``vae``: an AutoencoderKL (32 px -> 4x16x16 latents), L1 + MSE + 1e-6 KL, on renders."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from iceb.toy import world as W
from iceb.toy.train.common import hash_seed, load_ckpt, save_ckpt, stage_generator, to_unit
from iceb.toy.train.config import TrainConfig, make_world
from iceb.toy.train.models import build_vae


def _renders(world: W.ToyWorld, n: int, seed: int, shuffle: bool = False) -> np.ndarray:
    return W.render_many(world, W.random_specs(world, n, seed, shuffle=shuffle))


def train_vae(cfg: TrainConfig, work: Path, log=print) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    world = make_world(cfg)
    ckpt = work / "vae_ckpt"
    torch.manual_seed(cfg.seed)
    vae = build_vae(cfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    meta = load_ckpt(ckpt, {"vae": vae}, opt) or {"step": 0, "seconds": 0.0}
    if meta["step"] >= cfg.vae_steps:
        return meta
    vae.train()
    bar = tqdm(range(meta["step"], cfg.vae_steps), desc="vae", initial=meta["step"], total=cfg.vae_steps)
    t0, losses = time.time(), []
    for step in bar:
        x = to_unit(_renders(world, cfg.vae_batch, seed=hash_seed(cfg, "vae-data", step), shuffle=cfg.shuffle_batches))
        lr = cfg.vae_lr * min(1.0, (step + 1) / 50) * (0.5 * (1 + math.cos(math.pi * step / cfg.vae_steps)) * 0.9 + 0.1)
        for g in opt.param_groups:
            g["lr"] = lr
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=stage_generator(cfg, "vae-z", step))
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
            save_ckpt(ckpt, {"vae": vae}, opt, meta)
    log(f"vae: {meta['step']} steps, {meta['seconds']:.0f} s, loss {meta.get('loss')}")
    return meta
