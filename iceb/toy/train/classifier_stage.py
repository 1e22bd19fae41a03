"""Stage 3, ``classifier``: training the toy CNN (:mod:`iceb.toy.classifier`) on fresh renders.

Blur, colour-gain, noise and VAE reconstructions augment the renders; the stage runs before ``diffusion`` so
that its accuracy probes can score the model while it trains.
"""
from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from iceb.toy import world as W
from iceb.toy.train.common import from_unit, hash_seed, load_ckpt, save_ckpt, stage_generator, to_unit
from iceb.toy.train.config import TrainConfig, make_world
from iceb.toy.train.models import load_vae
from iceb.toy.train.probes import work_classifier


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
    meta = load_ckpt(ckpt, {"net": net}, opt) or {"step": 0, "seconds": 0.0}
    net.train()
    t0, losses = time.time(), []
    total = cfg.cls_steps + cfg.cls_finetune_steps
    bar = tqdm(range(meta["step"], total), desc="classifier", initial=meta["step"], total=total)
    for step in bar:
        gen = stage_generator(cfg, "classifier", step)
        specs = W.random_specs(world, cfg.cls_batch, seed=hash_seed(cfg, "classifier-data", step),
                               shuffle=cfg.shuffle_batches)
        rng = random.Random(hash_seed(cfg, "classifier-order", step))
        rng.shuffle(specs)
        x = to_unit(W.render_many(world, specs))
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
            save_ckpt(ckpt, {"net": net}, opt, meta)
    net.eval()
    config = {"num_classes": len(world), "width": cfg.cls_width, "world": "toy", "world_config": make_world(cfg).config,
              "input": "uint8 RGB 32x32, scaled to [-1, 1]", "heads": ["concept", "position", "size", "background"],
              "positions": list(W.POSITIONS), "sizes": list(W.SIZES), "backgrounds": list(W.BACKGROUNDS)}
    save_classifier(net, config, work / "classifier.safetensors", work / "classifier.json")
    meta["accuracy"] = classifier_accuracy(cfg, work, vae=vae)
    save_ckpt(ckpt, {"net": net}, opt, meta)
    log(f"classifier: {meta['step']} steps, {meta['seconds']:.0f} s, accuracy {meta['accuracy']}")
    return meta


@torch.no_grad()
def classifier_accuracy(cfg: TrainConfig, work: Path, n: int = 1024, vae=None) -> dict[str, float]:
    """Held-out accuracy (seeds never used in training) on clean renders and on VAE reconstructions."""
    world = make_world(cfg)
    vae = vae if vae is not None else load_vae(cfg, work)
    specs = W.random_specs(world, n, seed=hash_seed(cfg, "classifier-test", 0))
    images = W.render_many(world, specs)
    x = to_unit(images)
    recon = np.concatenate([from_unit(vae.decode(vae.encode(x[i:i + 256]).latent_dist.mean).sample)
                            for i in range(0, n, 256)])
    clf = work_classifier(work)
    labels = {k: v.numpy() for k, v in _labels(world, specs).items()}
    res: dict[str, float] = {"n": n}
    for tag, ims in (("clean", images), ("vae", recon)):
        probs = clf.predict_all(list(ims))
        for k, p in probs.items():
            res[f"{tag}_{k}"] = float(np.mean(p.argmax(-1) == labels[k]))
    return res
