"""Stage ``parts`` and ``--from-parts``: a run's finished upstream stages committed, and a work folder rebuilt
from them, so that a long training run can span sittings whose work folders do not survive.

``parts`` (run explicitly: ``iceb toy train --stage parts``) writes into the export folder what the final bundle
will hold of the stages before diffusion: the VAE (fp32: it is small, and the latents are recomputed from it
exactly), the text encoder as it ships and as the diffusion stage keeps it frozen (fp16, the vocabulary's token
rows; :func:`~iceb.toy.train.text_stage.load_text_encoder`), the classifier, the split and the caption corpus, and
``parts.json``: the config, each stage's record (steps, seconds, accuracy, history), the sha256 of every file and
of the latents. It writes no ``model_index.json``, so no loader mistakes the parts for a model.

:func:`seed_from_parts` writes those back as the finished checkpoints of a work folder (``vae_ckpt``,
``classifier_ckpt`` and ``classifier.*``, ``text_ckpt``). The config may differ from the recorded one only in
fields that the stages from ``latents`` on read (:data:`DOWNSTREAM_FIELDS`); the latents stage then recomputes the
latents and they must hash as recorded. A rebuilt run therefore trains bit for bit as one that kept its folder.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from iceb.toy.train.config import TrainConfig, make_world
from iceb.utils.download import sha256_file

PARTS_FILE = "parts.json"
#: Config fields that only the diffusion, guidance and export stages read: a run rebuilt from parts may change them.
DOWNSTREAM_FIELDS = frozenset({
    "unet_block_out", "unet_attention", "unet_heads", "steps", "batch", "lr", "lr_decay_from", "floor_steps",
    "min_snr", "ema_max", "empty_caption", "aux_weight", "probe_every", "probe_concepts", "text_bank",
    "freeze_text", "gen_steps", "guidance", "guidance_grid", "guidance_images", "checkpoint_every"})
_STAGE_CKPTS = {"vae": "vae_ckpt", "classifier": "classifier_ckpt", "text": "text_ckpt"}


def export_parts(cfg: TrainConfig, work: Path, out: Path, log=print) -> dict[str, Any]:
    """Write the finished upstream stages of ``work`` into ``out`` (see the module docstring).

    Args:
        cfg: The run's config (a frozen text encoder: ``freeze_text`` and ``text_steps`` > 0).
        work: The run's work folder (VAE, latents, classifier and text stages finished).
        out: The export folder (``data/<world>``).
        log: Where progress lines go.

    Returns:
        The record written to ``out/parts.json``.
    """
    from iceb.data.tokenizer import load_clip_tokenizer
    from iceb.toy.train.export import vocabulary_ids, world_name, world_split, write_world_files
    from iceb.toy.train.models import load_vae
    from iceb.toy.train.text_stage import load_text_encoder
    from iceb.utils.io import write_text
    from iceb.weight_layout import write_checkpoint_layout, write_token_rows

    if not (cfg.freeze_text and cfg.text_steps > 0):
        raise ValueError("parts hand over a frozen text encoder: the config needs freeze_text and text_steps > 0")
    for f in ("latents.safetensors", "classifier.safetensors", "classifier.json"):
        if not (work / f).is_file():
            raise FileNotFoundError(f"{work / f} is missing: run the stages up to 'text' first")
    world, name, tokenizer, split = make_world(cfg), world_name(cfg), load_clip_tokenizer(), world_split(cfg)
    model = out / "model"
    for sub in ("vae", "text_encoder"):
        shutil.rmtree(model / sub, ignore_errors=True)
    load_vae(cfg, work).save_pretrained(model / "vae", safe_serialization=True)
    load_text_encoder(cfg, work, tokenizer).to(torch.float16).save_pretrained(model / "text_encoder",
                                                                              safe_serialization=True)
    write_checkpoint_layout(model)
    write_token_rows(model, vocabulary_ids(world, tokenizer, split))
    write_world_files(cfg, work, out, split)
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != PARTS_FILE
                   and (p.parent == out or model in p.parents) and "quality" not in p.name)
    record = {"config": cfg.to_json(), "world": name, "world_config": world.config,
              "stages": {st: json.loads((work / f"{ck}.json").read_text()) for st, ck in _STAGE_CKPTS.items()},
              "latents_sha256": sha256_file(work / "latents.safetensors"),
              "files_sha256": {str(p.relative_to(out)): sha256_file(p) for p in files},
              "torch": torch.__version__, "threads": cfg.threads}
    write_text(out / PARTS_FILE, json.dumps(record, indent=1) + "\n")
    log(f"parts: {len(files)} files in {out}")
    return record


def seed_from_parts(cfg: TrainConfig, parts: Path, work: Path, log=print) -> dict[str, Any]:
    """Write the finished checkpoints of the stages before diffusion into ``work`` from ``parts``.

    Args:
        cfg: The config to run on (may differ from the recorded one in :data:`DOWNSTREAM_FIELDS` only).
        parts: A folder written by :func:`export_parts`.
        work: The work folder to seed (created; its existing checkpoints of those stages are replaced).
        log: Where progress lines go.

    Returns:
        The parts record.

    Raises:
        FileNotFoundError: ``parts`` holds no ``parts.json``.
        ValueError: The config differs from the recorded one upstream, or a file does not match its sha256.
    """
    from safetensors.torch import load_file
    from transformers import CLIPTextModel

    from iceb.toy.classifier import load_net
    from iceb.toy.train.common import save_ckpt
    from iceb.toy.train.models import build_vae
    from iceb.weight_layout import quiet_transformers, read_token_rows

    path = parts / PARTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{parts} holds no {PARTS_FILE}: write it with 'iceb toy train --stage parts'")
    record = json.loads(path.read_text())
    recorded, now = TrainConfig.from_json(record["config"]).to_json(), cfg.to_json()
    differ = sorted(k for k in set(recorded) | set(now) if recorded.get(k) != now.get(k) and k not in DOWNSTREAM_FIELDS)
    if differ:
        raise ValueError(f"the config differs from the one {parts} was trained with in fields the stages before "
                         f"diffusion read: {differ}; only {sorted(DOWNSTREAM_FIELDS)} may change")
    for rel, digest in record["files_sha256"].items():
        if sha256_file(parts / rel) != digest:
            raise ValueError(f"{parts / rel} does not match {PARTS_FILE}")
    work.mkdir(parents=True, exist_ok=True)
    vae = build_vae(cfg)
    vae.load_state_dict(load_file(str(parts / "model" / "vae" / "diffusion_pytorch_model.safetensors")))
    save_ckpt(work / "vae_ckpt", {"vae": vae}, None, record["stages"]["vae"])
    with quiet_transformers(True):  # the table is stored as rows: transformers calls it missing
        te = CLIPTextModel.from_pretrained(parts / "model" / "text_encoder").float()
    read_token_rows(te, parts / "model" / "text_encoder")
    save_ckpt(work / "text_ckpt", {"text_encoder": te}, None, record["stages"]["text"])
    net, _ = load_net(parts / "classifier.safetensors", parts / "classifier.json")
    save_ckpt(work / "classifier_ckpt", {"net": net}, None, record["stages"]["classifier"])
    for f in ("classifier.safetensors", "classifier.json"):
        shutil.copyfile(parts / f, work / f)
    (work / "latents.safetensors").unlink(missing_ok=True)  # recomputed from the VAE, and checked
    (work / "parts_latents_sha256").write_text(record["latents_sha256"])
    log(f"work folder {work} seeded from {parts}")
    return record


def check_seeded_latents(work: Path) -> str | None:
    """In a work folder seeded from parts: whether the recomputed latents hash as the recorded run's.

    Why not an error: the VAE's bits are checked on seeding, but its convolutions on another CPU (other SIMD
    kernels) give other last bits, so a second machine cannot reproduce the latents bit for bit; on one machine
    the run stays bitwise resumable. The caller logs the note and the export records both hashes.

    Args:
        work: The work folder (seeded by :func:`seed_from_parts`, its latents stage done).

    Returns:
        None when they match (or the folder was not seeded); else a sentence saying they differ.
    """
    expected = work / "parts_latents_sha256"
    if not expected.is_file():
        return None
    got = sha256_file(work / "latents.safetensors")
    want = expected.read_text().strip()
    if got == want:
        return None
    return (f"the latents recomputed in {work} differ from the recorded run's ({got[:12]} vs {want[:12]}) though "
            f"the VAE matches its record: another CPU's kernels (or torch, or thread count) give other last bits; "
            f"training goes on from these latents, deterministic on this machine")
