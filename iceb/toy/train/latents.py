"""Stage 2, ``latents``: the diffusion training set, rendered and encoded once (posterior mean and std)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from iceb.toy import world as W
from iceb.toy.train.common import hash_seed, to_unit
from iceb.toy.train.config import TrainConfig, make_world
from iceb.toy.train.models import load_vae


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
            x = to_unit(W.render_many(world, specs[i:i + 256]))
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
