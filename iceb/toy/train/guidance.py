"""Stage 5, ``guidance``: the guidance scale shipped with the model, the best of a small grid on held-out seeds."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from iceb.toy import world as W
from iceb.toy.train.config import TrainConfig, make_world
from iceb.toy.train.models import build_pipeline
from iceb.toy.train.probes import concept_accuracy, work_classifier

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
    clf = work_classifier(work)
    prompts, seeds, true = [], [], []
    for c in world.concepts:
        for k in range(cfg.guidance_images):
            prompts.append(W.EDIT_TEMPLATES[k % len(W.EDIT_TEMPLATES)].format(c.name))
            seeds.append(GUIDANCE_SEED + 100 * c.id + k)
            true.append(c.id)
    acc: dict[str, float] = {}
    for g in cfg.guidance_grid:
        acc[str(g)] = concept_accuracy(cfg, pipe, clf, prompts, seeds, true, g, desc=f"guidance {g}")
    chosen = float(max(cfg.guidance_grid, key=lambda g: (acc[str(g)], -abs(g - cfg.guidance))))
    result = {"chosen": chosen, "accuracy": acc, "images": len(prompts), "seconds": time.time() - t0,
              "seeds": f"{GUIDANCE_SEED} + 100 * concept id + k"}
    write_json(out, result)
    log(f"guidance: {acc} -> {chosen}")
    return result


def shipped_guidance(cfg: TrainConfig, work: Path) -> float:
    p = work / "guidance.json"
    return float(json.loads(p.read_text())["chosen"]) if p.is_file() else cfg.guidance
