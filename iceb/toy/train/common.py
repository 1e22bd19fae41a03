"""What every stage shares: randomness as a function of (seed, stage, step), image scaling, checkpoints.

Randomness is never a running RNG, so a resumed run draws the same batches as an uninterrupted one.
Checkpoints are safetensors (tensors, optimizer state) plus JSON (the rest); no pickle.
"""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from iceb.toy.train.config import TrainConfig


# The three seed derivations below are frozen, not :func:`iceb.utils.hashing.seed_from`: the shipped toy
# model was trained with exactly these seeds, and resuming a run bit for bit needs them unchanged.
def stage_generator(cfg: TrainConfig, stage: str, step: int) -> torch.Generator:
    """The torch generator of (cfg.seed, stage, step)."""
    digest = hashlib.sha256(f"{cfg.seed}|{stage}|{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:7], "little"))


def stage_random(cfg: TrainConfig, stage: str, step: int) -> random.Random:
    """The Python RNG of (cfg.seed, stage, step)."""
    digest = hashlib.sha256(f"{cfg.seed}|{stage}|{step}|py".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def hash_seed(cfg: TrainConfig, stage: str, step: int) -> int:
    """A 32-bit seed of (cfg.seed, stage, step)."""
    return int.from_bytes(hashlib.sha256(f"{cfg.seed}|{stage}|{step}|s".encode()).digest()[:4], "little")


def to_unit(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def from_unit(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def save_ckpt(path: Path, modules: dict[str, nn.Module], opt: torch.optim.Optimizer | None,
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


def load_ckpt(path: Path, modules: dict[str, nn.Module], opt: torch.optim.Optimizer | None) -> dict[str, Any] | None:
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
