"""Seconds per ESD iteration on the CPU (or GPU), printed as JSON.

    PYTHONPATH=$PWD python bench/bench_esd.py --model tiny --iterations 20
    PYTHONPATH=$PWD python bench/bench_esd.py --model toy-shape --ddim-steps 10   # random UNet of the toy's shape

``toy-shape`` is a random-weight pipeline with the toy world's UNet (block_out 32/64/128, cross-attention
dim 128, 32 px) for timing when the trained toy bundle is absent. The load average is reported because a
shared machine makes the numbers noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import time


def toy_shape_pipeline():
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from iceb.models import build_tiny_pipeline

    tiny = build_tiny_pipeline()
    tok = tiny.tokenizer
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=512, num_hidden_layers=3,
                                      num_attention_heads=4, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).eval()
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=128, attention_head_dim=32, norm_num_groups=8).eval()
    return StableDiffusionPipeline(vae=tiny.vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=tiny.scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def main() -> None:
    import torch

    from editors import get_editor
    from editors.requests import EditRequest

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="tiny", help="tiny, toy-shape, or any iceb model spec")
    ap.add_argument("--editors", default="esd-x,esd-u")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--ddim-steps", type=int, default=None, help="default: the editor's file for the model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.model == "toy-shape":
        pipe, family = toy_shape_pipeline().to(args.device), "toy"
    else:
        from iceb.models import load_model

        loaded = load_model(args.model, device=args.device)
        pipe, family = loaded.pipe, loaded.family
    out = {"model": args.model, "device": args.device, "threads": args.threads, "iterations": args.iterations,
           "loadavg_before": os.getloadavg()[0], "editors": {}}
    for name in args.editors.split(","):
        cls = get_editor(name)
        overrides = {"iterations": args.iterations, "checkpoint_every": 0}
        if args.ddim_steps:
            overrides["ddim_steps"] = args.ddim_steps
        hp = cls.load_hparams(family, overrides=overrides)
        t0 = time.perf_counter()
        res = cls(hp, progress=False).edit(pipe, [EditRequest("cat", kind="erase")])
        total = time.perf_counter() - t0
        out["editors"][name] = {"s_per_iteration": total / args.iterations, "ddim_steps": hp.ddim_steps,
                                "trained_parameters": res.info["trained_parameters"],
                                "timings": {k: round(v, 3) for k, v in res.timings.items()}}
    out["loadavg_after"] = os.getloadavg()[0]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
