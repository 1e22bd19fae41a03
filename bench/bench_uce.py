"""UCE at Stable Diffusion 1.4 sizes on this CPU; prints JSON.

Random weights at SD-1.4 shapes: a CLIP ViT-L/14 text encoder (12 layers, 768 wide, 77 tokens) and the
UNet's 16 cross-attention modules (to_k / to_v: 768 -> 320/640/1280; the rest of the UNet plays no part
in UCE, so it is not built). For N concepts erased towards the empty prompt (UCE's defaults, 2023 tokens,
'' preserved):

- ``floor_encode_s``: encoding the edit, guide and preserve prompts once (distinct prompts, batched);
- ``edit_s``: the whole ``UCEEditor.edit`` (its own encoding + rows + the 32 solves), and its ratio to the floor
  (target <= 1.5);
- ``solve_erase_s``: the 32 solves (rows, Grams, Cholesky, updates) from encoded prompts (target <= 10 s at
  1000 concepts); solve cost depends only on shapes, so random embeddings stand in for the encoder's;
- ``solve_update_s``: the same with N distinct destinations (concept i -> concept i+1), where no guide
  rows repeat.

Encoding 1000 prompts with an SD-size encoder takes minutes on 2 cores, so above ``--full-max`` (100) the
floor is estimated from the measured seconds per prompt and the rows say ``estimated``.

    PYTHONPATH=$PWD python bench/bench_uce.py --sizes 1,100,1000 [--full-max 1000]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from types import SimpleNamespace

import torch

SD14_ATTN2 = (  # (module name, inner width) of SD-1.4's 16 cross-attention modules
    [(f"down_blocks.{b}.attentions.{a}.transformer_blocks.0.attn2", w) for b, w in enumerate((320, 640, 1280))
     for a in range(2)]
    + [("mid_block.attentions.0.transformer_blocks.0.attn2", 1280)]
    + [(f"up_blocks.{b}.attentions.{a}.transformer_blocks.0.attn2", w) for b, w in ((1, 1280), (2, 640), (3, 320))
       for a in range(3)]
)


def cross_attention_unet(text_dim: int = 768) -> torch.nn.Module:
    """A module tree holding only SD-1.4's attn2 to_k/to_v, under the UNet's own names."""
    root = torch.nn.Module()
    for name, width in SD14_ATTN2:
        parent = root
        parts = name.split(".")
        for p in parts[:-1]:
            if not hasattr(parent, p):
                parent.add_module(p, torch.nn.Module())
            parent = getattr(parent, p)
        attn = torch.nn.Module()
        attn.add_module("to_k", torch.nn.Linear(text_dim, width, bias=False))
        attn.add_module("to_v", torch.nn.Linear(text_dim, width, bias=False))
        parent.add_module(parts[-1], attn)
    return root


def sd_cross_attention_pipe() -> SimpleNamespace:
    """The stand-in pipeline both UCE's and SPEED's benchmarks edit: the offline CLIP tokenizer, a random SD-1.4
    text encoder and a UNet of SD-1.4's 16 cross-attentions (seed 0)."""
    from iceb.data.tokenizer import load_clip_tokenizer

    torch.manual_seed(0)
    tok = load_clip_tokenizer()
    return SimpleNamespace(tokenizer=tok, text_encoder=sd_text_encoder(tok), unet=cross_attention_unet())


def sd_text_encoder(tokenizer) -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return CLIPTextModel(cfg).eval()


def concept_names(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    syl = ["ka", "lo", "mi", "ren", "tas", "vo", "pel", "dri", "sun", "gor", "bel", "fa", "nix", "tor", "qua", "zel"]
    out: set[str] = set()
    while len(out) < n:
        words = [("".join(rng.choice(syl) for _ in range(rng.randint(2, 3)))) for _ in range(rng.randint(1, 2))]
        out.add(" ".join(words))
    return sorted(out)


def gemm_gflops(n: int = 8192, m: int = 768, repeats: int = 3) -> float:
    """float64 GEMM rate now (xᵀx, n×m): how much of this shared CPU the bench is getting."""
    x = torch.randn(n, m, dtype=torch.float64)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        x.T @ x
        best = min(best, time.perf_counter() - t)
    return round(2 * n * m * m / best / 1e9, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,100,1000")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--full-max", type=int, default=100,
                    help="encode for real and run the whole edit up to this many concepts; above it, the floor is "
                         "estimated from the measured seconds per prompt (marked estimated)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from editors.hooks import last_token_indices, tokenize
    from editors.requests import EditRequest
    from editors.uce import Encoded, UCEEditor, build_rows, encode_prompts, projection_names, uce_solve
    from editors.weights import get_tensor

    pipe = sd_cross_attention_pipe()
    tok = pipe.tokenizer
    hp = UCEEditor.load_hparams("sd-1.4")
    editor = UCEEditor(hp, progress=False)
    names = projection_names(pipe.unet)
    weights = {n: get_tensor(pipe, n) for n in names}
    gflops_start = gemm_gflops()
    results = []
    rate = None  # seconds per encoded prompt, from the largest fully measured size
    for n in [int(s) for s in args.sizes.split(",")]:
        concepts = concept_names(n)
        requests = [EditRequest(c, kind="erase") for c in concepts]
        pairs = editor.edit_pairs(requests)
        preserve = editor.preserve_prompts(requests)
        prompts = [p for pair in pairs for p in pair] + preserve
        upd = [(c, concepts[(i + 1) % n]) for i, c in enumerate(concepts)] if n > 1 else [(concepts[0], "")]
        row = {"concepts": n, "matrices": len(names)}
        with torch.no_grad():
            # the 32 solves: their cost depends only on shapes, so random 768-d embeddings stand in for
            # the encoder's at sizes where encoding for real would take too long on a shared CPU
            ids, mask = tokenize(tok, list(dict.fromkeys(prompts)))
            fake = Encoded(torch.randn(ids.shape[0], 77, 768), ids, last_token_indices(mask),
                           {p: i for i, p in enumerate(dict.fromkeys(prompts))})
            rows = build_rows(fake, pairs, preserve, hp.tokens)
            rows_u = build_rows(fake, upd, preserve, hp.tokens)
            s_p = editor.preserve_scale(preserve)
            t = time.perf_counter()
            uce_solve(weights, fake.emb, rows, lamb=hp.lamb, erase_scale=hp.erase_scale, preserve_scale=s_p)
            row["solve_erase_s"] = round(time.perf_counter() - t, 3)
            t = time.perf_counter()
            uce_solve(weights, fake.emb, rows_u, lamb=hp.lamb, erase_scale=hp.erase_scale, preserve_scale=s_p)
            row["solve_update_s"] = round(time.perf_counter() - t, 3)
            row.update(prompts_encoded=int(ids.shape[0]), edit_tokens=int(rows.edit.shape[0]),
                       preserve_tokens=int(rows.preserve.shape[0]))
            del fake
            if n <= args.full_max:
                t = time.perf_counter()
                enc = encode_prompts(pipe, prompts, args.batch_size)
                floor = time.perf_counter() - t
                rate = floor / enc.emb.shape[0]
                del enc
        if n <= args.full_max:
            t = time.perf_counter()
            res = editor.edit(pipe, requests)
            edit = time.perf_counter() - t
            row.update(floor_encode_s=round(floor, 3), edit_s=round(edit, 3), edit_over_floor=round(edit / floor, 3),
                       edit_encode_s=round(res.timings["encode"], 3), edit_solve_s=round(res.timings["solve"], 3))
        elif rate is not None:
            est = rate * row["prompts_encoded"]
            row.update(estimated=True, floor_encode_s_est=round(est, 1),
                       edit_over_floor_est=round((est + row["solve_erase_s"]) / est, 3))
        results.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({
        "bench": "uce", "hparams": "uce/sd-1.4.yaml (2023 tokens, replace, lambda 0.5, '' preserved)",
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "load_average_1m_at_end": os.getloadavg()[0],
        "float64_gemm_gflops_start_end": [gflops_start, gemm_gflops()], "note": "shared CPU: other processes may slow these timings",
        "results": results,
    }, indent=1))


if __name__ == "__main__":
    main()
