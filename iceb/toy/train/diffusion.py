"""Stage ``diffusion``: a CLIPTextModel and a UNet2DConditionModel trained jointly, or the UNet alone.

DDPM eps-prediction, min-SNR-5 weighting, AdamW with warm-up, grad clip, EMA. A small auxiliary linear head
on the text encoder's last layer (at the name's last token and at the EOS token) predicts the concept the
caption's images show; it speeds up the name -> concept binding and is not shipped. With ``freeze_text`` the
``text`` stage's encoder is loaded and kept frozen (no auxiliary head), as Stable Diffusion keeps CLIP's; with
``text_bank`` its 77-token states of a fixed set of caption draws are computed once (:func:`caption_bank`) and the
batches are drawn from them, since at Stable Diffusion's widths encoding a batch costs more than the UNet's step.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from iceb.toy.train.captions import CaptionSampler, name_end_position
from iceb.toy.train.common import load_ckpt, save_ckpt, stage_generator, stage_random
from iceb.toy.train.config import TrainConfig, make_world
from iceb.toy.train.models import (
    assemble_pipeline,
    build_text_encoder,
    build_unet,
    load_vae,
    text_autocast,
    train_scheduler,
)
from iceb.toy.train.probes import concept_accuracy, work_classifier
from iceb.toy.train.text_stage import load_text_encoder


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
    if cfg.freeze_text:  # the ``text`` stage's encoder, kept as it is (built first all the same: same UNet init)
        text_encoder = load_text_encoder(cfg, work, tokenizer).requires_grad_(False)
        params = list(unet.parameters())
    else:
        params = list(text_encoder.parameters()) + list(unet.parameters()) + list(aux.parameters())
    # fused: one kernel over all 11M parameters (9 ms instead of 47 ms a step on 2 threads)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    ema_te, ema_unet = EMA(text_encoder, cfg.ema_max), EMA(unet, cfg.ema_max)
    ckpt = work / "diffusion_ckpt"
    modules = {"text_encoder": text_encoder, "unet": unet, "aux": aux, "ema_te": ema_te.state_for_ckpt(),
               "ema_unet": ema_unet.state_for_ckpt()}
    meta = load_ckpt(ckpt, modules, opt) or {"step": 0, "seconds": 0.0, "history": []}
    total = cfg.steps + cfg.floor_steps
    if meta["step"] >= total:
        return meta
    sampler = CaptionSampler(world, data["attrs"], cfg)
    bank = caption_bank(cfg, work, sampler, tokenizer, text_encoder) if cfg.freeze_text and cfg.text_bank else None
    noise_sched = train_scheduler()
    alphas = noise_sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    text_encoder.train()
    unet.train()
    bar = tqdm(range(meta["step"], total), desc="diffusion", initial=meta["step"], total=total)
    t0, losses, aux_acc = time.time(), [], []
    start_wall = time.time()
    for step in bar:
        rng, gen = stage_random(cfg, "diffusion", step), stage_generator(cfg, "diffusion", step)
        if bank is not None:
            rows_b = torch.tensor([rng.randrange(len(bank["image"])) for _ in range(cfg.batch)])
            draws, idx = [], bank["image"][rows_b]
        else:
            draws = [sampler.draw(rng) for _ in range(cfg.batch)]
            idx = torch.tensor([d[1] for d in draws])
            ids = tokenizer([d[0] for d in draws], padding="max_length", max_length=77, truncation=True,
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
        if bank is not None:
            hidden = bank["hidden"][rows_b].float()
        else:
            with torch.set_grad_enabled(not cfg.freeze_text):
                hidden = text_encoder(ids).last_hidden_state
        pred = unet(zt, t, encoder_hidden_states=hidden).sample
        w = torch.clamp(snr[t], max=cfg.min_snr) / snr[t]
        loss_mse = (((pred - noise) ** 2).mean((1, 2, 3)) * w).mean()
        # auxiliary: the concept the images show, read at the name's last token and at EOS
        rows = [i for i, d in enumerate(draws) if d[3] is not None]
        loss = loss_mse
        if rows and cfg.aux_weight > 0 and not cfg.freeze_text:
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
        if not cfg.freeze_text:
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
            save_ckpt(ckpt, modules, opt, meta)
            if cfg.probe_every and (done % cfg.probe_every == 0 or done == total):
                probe = quick_probe(cfg, work, ema_te, ema_unet, tokenizer, scaling)
                if probe is not None:
                    meta["history"][-1]["probe_acc"] = probe
                    log(f"step {done}: probe concept accuracy {probe:.3f} (one image per concept, EMA weights)")
                    save_ckpt(ckpt, modules, opt, meta)
                t0 = time.time()
        if stop:
            log(f"diffusion: stopped after {max_seconds} s at step {done}; rerun to resume")
            break
    log(f"diffusion: {meta['step']} steps, {meta['seconds']:.0f} s of training")
    return meta


@torch.no_grad()
def caption_bank(cfg: TrainConfig, work: Path, sampler: CaptionSampler, tokenizer, text_encoder,
                 chunk: int = 256) -> dict[str, torch.Tensor]:
    """``cfg.text_bank`` (caption, image) draws encoded once by the frozen encoder: 77-token last-layer states in
    fp16 (``hidden``) and the image each caption goes with (``image``); cached in the work folder.

    Draw ``j`` comes from its own seeded RNG (stage ``"bank"``, step ``j``), so the bank is a function of the
    config alone. With ``text_autocast`` it is encoded in bf16 autocast: the states then differ from an fp32
    pass by bf16 rounding (about 3 significant digits), noise the UNet trains on; generation stays fp32.
    """
    from safetensors.torch import load_file, save_file

    from iceb.utils.io import atomic_path

    path = work / "text_bank.safetensors"
    if path.is_file():
        bank = load_file(str(path))
        if len(bank["image"]) == cfg.text_bank:
            return bank
    draws = [sampler.draw(stage_random(cfg, "bank", j)) for j in range(cfg.text_bank)]
    hidden = torch.empty(cfg.text_bank, 77, cfg.text_hidden, dtype=torch.float16)
    text_encoder.eval()
    for i in tqdm(range(0, cfg.text_bank, chunk), desc="caption bank"):
        ids = tokenizer([d[0] for d in draws[i:i + chunk]], padding="max_length", max_length=77, truncation=True,
                        return_tensors="pt").input_ids
        with text_autocast(cfg):
            hidden[i:i + chunk] = text_encoder(ids).last_hidden_state.to(torch.float16)
    bank = {"hidden": hidden, "image": torch.tensor([d[1] for d in draws])}
    with atomic_path(path) as tmp:
        save_file(bank, str(tmp))
    return bank


@torch.no_grad()
def quick_probe(cfg: TrainConfig, work: Path, ema_te: EMA, ema_unet: EMA, tokenizer, scaling: float) -> float | None:
    """Concept accuracy of one image per concept ('A photo of {name}') from the EMA weights."""
    if not (work / "classifier.safetensors").is_file():
        return None
    world = make_world(cfg)
    te, unet, vae = build_text_encoder(cfg, tokenizer), build_unet(cfg), load_vae(cfg, work)
    te.load_state_dict(ema_te.shadow)
    unet.load_state_dict(ema_unet.shadow)
    pipe = assemble_pipeline(tokenizer, te, unet, vae, scaling)
    concepts = world.concepts
    if cfg.probe_concepts and cfg.probe_concepts < len(concepts):  # an evenly spaced, fixed subset
        concepts = tuple(concepts[i * len(concepts) // cfg.probe_concepts] for i in range(cfg.probe_concepts))
    return concept_accuracy(cfg, pipe, work_classifier(work), [f"A photo of {c.name}" for c in concepts],
                             [1000 + c.id for c in concepts], [c.id for c in concepts], cfg.guidance,
                             progress=False)
