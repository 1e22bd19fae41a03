"""Training the toy world's text-to-image model and classifier from scratch, on the CPU, resumably.

Stages (``iceb toy train --stage ...``), each checkpointed in a work folder and resumed when rerun:

1. ``vae``: an AutoencoderKL (32 px -> 4x16x16 latents), L1 + MSE + 1e-6 KL, on renders.
2. ``latents``: render the diffusion training set and encode it once (posterior mean and std).
3. ``classifier``: the toy CNN on fresh renders with blur, colour-gain, noise and VAE reconstructions (before
   the diffusion stage, so that its accuracy probes can score the model while it trains).
4. ``text`` (optional, ``text_steps`` > 0): the text encoder trained alone on attribute heads, for the
   diffusion stage to keep frozen (``freeze_text``), as Stable Diffusion keeps CLIP's; see ``text_stage``.
5. ``diffusion``: a CLIPTextModel (4 layers, 128 wide) and a UNet2DConditionModel (cross-attention 128)
   trained jointly: DDPM eps-prediction, min-SNR-5 weighting, AdamW with warm-up, grad clip, EMA. A small
   auxiliary linear head on the text encoder's last layer (at the name's last token and at the EOS token)
   predicts the concept the caption's images show; it speeds up the name -> concept binding and is not
   shipped.
6. ``guidance``: the guidance scale shipped with the model, the best of a small grid on held-out seeds.
7. ``export``: the EMA weights as a diffusers folder (weights stored in fp16, loaded as fp32), the
   classifier, the split bundle, the caption corpus and ``train_config.json`` with sha256 of every weight.

``parts`` (explicit only) commits the finished stages before diffusion, and ``--from-parts`` rebuilds a work
folder from them, so a run longer than one sitting continues bit for bit (``parts``).

Randomness is a function of (seed, stage, step), never of a running RNG, so a resumed run draws the same
batches as an uninterrupted one. Checkpoints are safetensors + JSON (no pickle).

One module per stage (``vae``, ``latents``, ``classifier_stage``, ``text_stage``, ``diffusion``, ``guidance``,
``export``), on shared ``config`` (:class:`TrainConfig`), ``common`` (seeded randomness, checkpoints), ``captions``
(the training captions), ``models`` (the modules and the pipeline) and ``probes`` (accuracy under the classifier);
this module runs them in order.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from iceb.toy.train.classifier_stage import classifier_accuracy, train_classifier
from iceb.toy.train.config import DEFAULT_WORK, TOY_DATA, TrainConfig, make_world
from iceb.toy.train.diffusion import EMA, train_diffusion
from iceb.toy.train.export import export_bundle
from iceb.toy.train.guidance import tune_guidance
from iceb.toy.train.latents import encode_latents
from iceb.toy.train.models import build_pipeline, build_text_encoder, build_unet, build_vae, train_scheduler
from iceb.toy.train.parts import check_seeded_latents, export_parts, seed_from_parts
from iceb.toy.train.text_stage import train_text
from iceb.toy.train.vae import train_vae

__all__ = ["DEFAULT_WORK", "EMA", "TOY_DATA", "TrainConfig", "build_pipeline", "build_text_encoder", "build_unet",
           "build_vae", "classifier_accuracy", "encode_latents", "export_bundle", "make_world", "train_all",
           "train_classifier", "train_diffusion", "train_text", "train_scheduler", "train_vae", "tune_guidance"]


def train_all(cfg: TrainConfig, work: Path = DEFAULT_WORK, out: Path = TOY_DATA, stages: tuple[str, ...] = (
        "vae", "latents", "classifier", "text", "diffusion", "guidance", "export"), log=print, max_seconds: float | None = None,
        note: str | None = None, from_parts: Path | None = None) -> dict:
    """Run the given stages in order, resuming each from its checkpoint.

    ``from_parts``: first rebuild the work folder's finished stages before diffusion from a folder that the
    ``parts`` stage wrote (:func:`~iceb.toy.train.parts.seed_from_parts`); the config is then this one.
    """
    work.mkdir(parents=True, exist_ok=True)
    cfg_path = work / "config.json"
    if from_parts is not None:
        seed_from_parts(cfg, Path(from_parts), work, log)
        cfg_path.write_text(json.dumps(cfg.to_json(), indent=1))
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
            note = check_seeded_latents(work)
            if note:
                log(note)
                result[stage]["parts_latents"] = note
        elif stage == "text":
            result[stage] = train_text(cfg, work, log, max_seconds=max_seconds)
        elif stage == "diffusion":
            result[stage] = train_diffusion(cfg, work, log, max_seconds=max_seconds)
        elif stage == "classifier":
            result[stage] = train_classifier(cfg, work, log)
        elif stage == "guidance":
            result[stage] = tune_guidance(cfg, work, log)
        elif stage == "export":
            result[stage] = export_bundle(cfg, work, out, log, timings, note)
        elif stage == "parts":
            result[stage] = export_parts(cfg, work, out, log)
        else:
            raise ValueError(f"unknown stage {stage!r}")
        timings[stage] = time.time() - t
    return result
