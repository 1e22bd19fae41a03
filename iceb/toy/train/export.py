"""Stage 7, ``export``: the EMA weights as a diffusers folder (fp16), the classifier, split, captions and
``train_config.json`` with the sha256 of every weight file.

The world's name (``toy``, ``toy-1k``) is the recipe whose world the config trains (:func:`world_name`); it
names the model's family, world and classifier in ``iceb_model.json``. A world other than the 64-concept
default ships its scaled split (:func:`iceb.toy.split.build_scaled_split`) and its text encoder's token table as
the rows its vocabulary uses (:func:`iceb.weight_layout.write_token_rows`: 1,972 of 49,408 rows for toy-1k, 3 MB
instead of 76 MB in fp16); the 64-concept bundle keeps its full table, as shipped.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from iceb.toy.train.config import TOY_DATA, TrainConfig, make_world
from iceb.toy.train.guidance import shipped_guidance
from iceb.toy.train.models import build_pipeline
from iceb.utils.download import sha256_file


def export_bundle(cfg: TrainConfig, work: Path, out: Path = TOY_DATA, log=print, timings: dict | None = None,
           note: str | None = None) -> dict:
    """Write the diffusers folder (fp16 weights), classifier, split, captions and train_config.json."""
    import shutil

    world = make_world(cfg)
    name = world_name(cfg)
    split = world_split(cfg)
    pipe = build_pipeline(cfg, work)
    model_dir = out / "model"
    tmp_dir = out / ".model.tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    # The VAE is small: a world other than the 64-concept default keeps it exact, as its parts hand it over
    # (casting the pipeline to fp16 and back would round it); the 64-concept bundle ships it in fp16.
    for part in ("unet", "text_encoder") if name != "toy" else ("unet", "text_encoder", "vae"):
        getattr(pipe, part).to(torch.float16)
    pipe.save_pretrained(tmp_dir, safe_serialization=True)
    from iceb.weight_layout import write_checkpoint_layout

    write_checkpoint_layout(tmp_dir)  # the hub's name layout: transformers 4 and 5 both read it
    if name != "toy":
        from iceb.weight_layout import write_token_rows

        write_token_rows(tmp_dir, vocabulary_ids(world, pipe.tokenizer, split))
    info = {"family": name, "world": name, "classifier": name, "model_id": f"iceb/{name}-world",
            "world_config": world.config,
            "generation": {"height": 32, "width": 32, "num_inference_steps": cfg.gen_steps,
                           "guidance_scale": shipped_guidance(cfg, work), "scheduler": None, "batch_size": 64},
            "note": "weights are stored in float16 to keep the folder small; load them as float32 "
                    "(iceb.models.load_model does) - the stored values are exactly what was evaluated"}
    (tmp_dir / "iceb_model.json").write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(model_dir, ignore_errors=True)
    tmp_dir.rename(model_dir)
    write_world_files(cfg, work, out, split)
    weights = sorted(p for p in out.rglob("*.safetensors"))
    stage_meta = {}
    for stage in ("vae", "text", "diffusion", "classifier"):
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
        "storage": ("model weights in float16 safetensors (cast from the float32 EMA weights)"
                    + ("" if name == "toy" else ", the VAE in float32") + "; loaded as float32"),
        "note": note,
    }
    (out / "train_config.json").write_text(json.dumps(record, indent=2) + "\n")
    total = sum(record["weights_bytes"].values())
    log(f"exported to {out}: {total / 1e6:.1f} MB of weights")
    return record


def world_split(cfg: TrainConfig):
    """The split a config's world ships: the 64-concept split for ``toy``, the scaled one for a recipe world."""
    from iceb.toy.split import build_scaled_split, build_split

    name = world_name(cfg)
    return build_split(make_world(cfg)) if name == "toy" else build_scaled_split(make_world(cfg), name=name)


def write_world_files(cfg: TrainConfig, work: Path, out: Path, split) -> None:
    """The classifier (copied from ``work``), the split and the caption corpus, into ``out``."""
    import shutil

    from iceb.utils.io import write_text

    for f in ("classifier.safetensors", "classifier.json"):
        shutil.copyfile(work / f, out / f)
    split.save(out / "split.json")
    world = make_world(cfg)
    n_captions = max(4000, 16 * len(world))  # 4,000 for the 64-concept world, as shipped
    write_text(out / "captions.txt", "\n".join(world.caption_corpus(n_captions, seed=cfg.seed + 7)) + "\n")


def world_name(cfg: TrainConfig) -> str:
    """The built-in world a config trains: the recipe (:data:`~iceb.toy.train.config.WORLD_RECIPES`) with its
    world, else ``toy`` (the default world, and any hand-made one such as ``TrainConfig.tiny()``'s, which is
    exported as a ``toy``-family bundle, as before recipes existed)."""
    from iceb.toy.train.config import WORLD_RECIPES

    for name, rec in WORLD_RECIPES.items():
        if name != "toy" and rec.get("world", {}) == cfg.world:
            return name
    return "toy"


def vocabulary_ids(world, tokenizer, split) -> list[int]:
    """:func:`~iceb.toy.train.text_stage.world_token_ids`, checked to cover every prompt of the world's split."""
    from iceb.toy.train.text_stage import world_token_ids

    ids = set(world_token_ids(world, tokenizer))
    prompts = [t.replace("{}", c.name) for c in split.concepts for t in split.templates]
    prompts += [p.template.replace("{}", c.name) for c in split.concepts for p in c.prompts]
    missing = {t for seq in tokenizer(prompts).input_ids for t in seq} - ids
    if missing:
        raise ValueError(f"the world's vocabulary misses tokens its prompts use: {sorted(missing)[:10]}")
    return sorted(ids)
