"""Stage ``text`` (optional): the text encoder trained alone, which the ``diffusion`` stage then keeps frozen.

Why: the 256-concept prototype (``docs/toy_1k_prototype.md``) learnt the name -> concept binding jointly
through the diffusion loss, and needed about three times the steps of the 64-concept world for the same probe
accuracy; at 1,250 concepts and Stable Diffusion's text widths that is far past a CPU budget. Stable Diffusion
itself never trains its text encoder: CLIP's is learnt first, on another objective, and frozen. This stage does
the same at toy scale.

Objective: linear heads read the name's last token and the EOS token of a training caption and predict the
attributes of the concept its images show, one head per attribute (shape, colour, pattern), not one class per
concept: the encoder's features then factorise by attribute, as CLIP's do by meaning, so that the UNet can
learn to render combinations instead of memorising every concept. At EOS three more heads predict the
caption's context (position, size, background; a caption that leaves one free is not scored on it). A
misunderstood alias is trained with the attributes of the concept it is mistaken for, as in the diffusion
stage; untrained aliases are never seen.

With ``text_autocast`` the training passes run in bf16 autocast (2.1x faster at Stable Diffusion's widths on
a 2-core CPU); the weights, the optimizer and the evaluation stay fp32.

Captions are cut to the batch's longest one instead of 77 tokens: under CLIP's causal mask no position up to
EOS attends to the padding after it, so every position a head reads is computed exactly as in a 77-token pass.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from iceb.toy import world as W
from iceb.toy.train.captions import CaptionSampler, name_end_position
from iceb.toy.train.common import load_ckpt, save_ckpt, stage_random
from iceb.toy.train.config import TrainConfig, make_world
from iceb.toy.train.models import build_text_encoder, text_autocast

#: The attributes predicted at the name token and at EOS, and the context predicted at EOS only.
CONCEPT_HEADS = ("shape", "colour", "pattern")
CONTEXT_HEADS = ("position", "size", "background")
_IGNORE = -100


class TextHeads(nn.Module):
    """One linear head per attribute over the encoder's last layer (not shipped)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        sizes = {"shape": len(W.SHAPES), "colour": len(W.COLOURS), "pattern": len(W.PATTERNS),
                 "position": len(W.POSITIONS), "size": len(W.SIZES), "background": len(W.BACKGROUNDS)}
        self.heads = nn.ModuleDict({k: nn.Linear(hidden, n) for k, n in sizes.items()})

    def forward(self, name_h: torch.Tensor, eos_h: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {f"name_{k}": self.heads[k](name_h) for k in CONCEPT_HEADS}
        out.update({f"eos_{k}": self.heads[k](eos_h) for k in CONCEPT_HEADS + CONTEXT_HEADS})
        return out


def concept_targets(world: W.ToyWorld, cids: list[int]) -> dict[str, torch.Tensor]:
    """Attribute indices (shape, colour, pattern) of the concepts ``cids``."""
    names = {"shape": W.SHAPES, "colour": [c for c, _ in W.COLOURS], "pattern": W.PATTERNS}
    return {k: torch.tensor([list(names[k]).index(getattr(world.concepts[c], k)) for c in cids])
            for k in CONCEPT_HEADS}


def _context_targets(contexts: list[W.Context]) -> dict[str, torch.Tensor]:
    values = {"position": W.POSITIONS, "size": W.SIZES, "background": W.BACKGROUNDS}
    return {k: torch.tensor([values[k].index(getattr(c, k)) if getattr(c, k) else _IGNORE for c in contexts])
            for k in CONTEXT_HEADS}


def _read(text_encoder, tokenizer, captions: list[str], words: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Last-layer states at each caption's name token and at its EOS (sequences cut to the longest)."""
    ids = tokenizer(captions, padding="longest", max_length=77, truncation=True, return_tensors="pt").input_ids
    hidden = text_encoder(ids).last_hidden_state
    rows = torch.arange(len(captions))
    name_pos = torch.tensor([name_end_position(tokenizer, c, w) for c, w in zip(captions, words)])
    eos_pos = (ids == tokenizer.eos_token_id).int().argmax(-1)
    return hidden[rows, name_pos], hidden[rows, eos_pos]


def train_text(cfg: TrainConfig, work: Path, log=print, max_seconds: float | None = None) -> dict[str, Any] | None:
    """Train the text encoder alone for ``cfg.text_steps`` (nothing when 0); resumable bit for bit.

    Args:
        cfg: the run's config (``text_steps``, ``text_batch``, ``text_lr``, ``warmup``, ``checkpoint_every``).
        work: the run's work folder (``text_ckpt.*`` is written there).
        log: where progress lines go.
        max_seconds: stop (checkpointed) after this much wall time; rerun to resume.

    Returns:
        The checkpoint's metadata (step, seconds, history, and after the last step ``eval``: per kind of word,
        the fraction whose attributes every head reads right from "A photo of {word}"), or ``None`` when the
        config has no text stage.
    """
    from iceb.data.tokenizer import load_clip_tokenizer

    if cfg.text_steps <= 0:
        return None
    done = (work / "text_ckpt").with_suffix(".json")
    if done.is_file() and json.loads(done.read_text())["step"] >= cfg.text_steps:
        return json.loads(done.read_text())  # finished (a folder rebuilt from parts holds the encoder alone)
    torch.set_num_threads(cfg.threads)
    world = make_world(cfg)
    tokenizer = load_clip_tokenizer()
    torch.manual_seed(cfg.seed)
    text_encoder = build_text_encoder(cfg, tokenizer)
    heads = TextHeads(cfg.text_hidden)
    params = list(text_encoder.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.text_lr, weight_decay=cfg.weight_decay, fused=True)
    ckpt = work / "text_ckpt"
    modules = {"text_encoder": text_encoder, "heads": heads}
    meta = load_ckpt(ckpt, modules, opt) or {"step": 0, "seconds": 0.0, "history": []}
    if meta["step"] >= cfg.text_steps:
        return meta
    sampler = CaptionSampler(world, None, cfg)
    text_encoder.train()
    bar = tqdm(range(meta["step"], cfg.text_steps), desc="text", initial=meta["step"], total=cfg.text_steps)
    t0 = start_wall = time.time()
    losses: list[float] = []
    accs: list[float] = []
    for step in bar:
        rng = stage_random(cfg, "text", step)
        draws = [sampler.draw_caption(rng) for _ in range(cfg.text_batch)]
        captions, contexts, cids, words = (list(x) for x in zip(*draws))
        lr = cfg.text_lr * min(1.0, (step + 1) / cfg.warmup)
        lr *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, step / cfg.text_steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        with text_autocast(cfg):  # the evaluation below runs in fp32, as the shipped encoder does
            name_h, eos_h = _read(text_encoder, tokenizer, captions, words)
            logits = {k: v.float() for k, v in heads(name_h, eos_h).items()}
        concept, context = concept_targets(world, cids), _context_targets(contexts)
        loss = sum(nn.functional.cross_entropy(logits[f"{where}_{k}"], concept[k])
                   for where in ("name", "eos") for k in CONCEPT_HEADS)
        loss = loss + sum(nn.functional.cross_entropy(logits[f"eos_{k}"], context[k], ignore_index=_IGNORE)
                          for k in CONTEXT_HEADS if (context[k] != _IGNORE).any())  # all free: NaN, not 0
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        right = torch.stack([logits[f"name_{k}"].argmax(-1) == concept[k] for k in CONCEPT_HEADS]).all(0)
        accs.append(float(right.float().mean()))
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", acc=f"{np.mean(accs[-50:]):.2f}")
        done = step + 1
        stop = max_seconds is not None and time.time() - start_wall > max_seconds
        if done % cfg.checkpoint_every == 0 or done == cfg.text_steps or stop:
            meta["seconds"] += time.time() - t0
            t0 = time.time()
            meta["step"] = done
            meta["history"].append({"step": done, "loss": float(np.mean(losses[-50:])),
                                    "name_acc": float(np.mean(accs[-50:])), "seconds": meta["seconds"]})
            if done == cfg.text_steps:
                meta["eval"] = word_accuracy(world, text_encoder, heads, tokenizer)
                log(f"text: attributes read right from 'A photo of {{word}}': {meta['eval']}")
            save_ckpt(ckpt, modules, opt, meta)
        if stop:
            log(f"text: stopped after {max_seconds} s at step {done}; rerun to resume")
            break
    log(f"text: {meta['step']} steps, {meta['seconds']:.0f} s of training")
    return meta


@torch.no_grad()
def word_accuracy(world: W.ToyWorld, text_encoder, heads: TextHeads, tokenizer, batch: int = 256) -> dict[str, float]:
    """Per kind of trained word, the fraction whose three attributes both the name and the EOS heads read right
    from "A photo of {word}" (a misunderstood alias counts as right when it reads as the concept it is
    trained as)."""
    was_training = text_encoder.training
    text_encoder.eval()
    kinds: dict[str, list[bool]] = {}
    words = [(w, world.lookup(w)[1], img) for w, _true, img in world.trained_names()]
    for i in range(0, len(words), batch):
        chunk = words[i:i + batch]
        captions = [f"A photo of {w}" for w, _, _ in chunk]
        name_h, eos_h = _read(text_encoder, tokenizer, captions, [w for w, _, _ in chunk])
        logits = heads(name_h, eos_h)
        target = concept_targets(world, [img for _, _, img in chunk])
        ok = torch.stack([logits[f"{where}_{k}"].argmax(-1) == target[k]
                          for where in ("name", "eos") for k in CONCEPT_HEADS]).all(0)
        for (_, kind, _), good in zip(chunk, ok.tolist()):
            kinds.setdefault(kind, []).append(good)
    text_encoder.train(was_training)
    return {k: float(np.mean(v)) for k, v in sorted(kinds.items())}


def load_text_encoder(cfg: TrainConfig, work: Path, tokenizer):
    """The ``text`` stage's finished encoder as the diffusion stage keeps it frozen: exactly the encoder that will
    ship, i.e. rounded to fp16 (the committed weights' precision) with every token row outside the world's
    vocabulary zero (:func:`world_token_ids`; the committed table holds only those rows).

    Why: the UNet then learns from the very states the shipped model computes, and a run whose work folder was
    rebuilt from the committed parts (``iceb toy train --from-parts``) trains bit for bit as one that never left
    its work folder.
    """
    text_encoder = build_text_encoder(cfg, tokenizer)
    meta = load_ckpt(work / "text_ckpt", {"text_encoder": text_encoder}, None)
    if meta is None or meta["step"] < cfg.text_steps:
        raise FileNotFoundError(f"no finished text-encoder checkpoint in {work}; run the 'text' stage first")
    keep = torch.tensor(world_token_ids(make_world(cfg), tokenizer))
    with torch.no_grad():
        for p in text_encoder.parameters():
            p.copy_(p.half().float())
        table = text_encoder.get_input_embeddings().weight
        kept = table[keep].clone()
        table.zero_()
        table[keep] = kept
    return text_encoder


def world_token_ids(world: W.ToyWorld, tokenizer) -> list[int]:
    """The token ids of the world's vocabulary (:meth:`~iceb.toy.world.ToyWorld.vocabulary`) plus BOS and EOS:
    every token any of its captions, names or prompts can produce."""
    ids = {tokenizer.bos_token_id, tokenizer.eos_token_id}
    for seq in tokenizer(world.vocabulary()).input_ids:
        ids.update(seq)
    return sorted(ids)
