"""Benchmark EMCID stage II at SD-1.4 text-encoder size (random weights) against the official code's timings.

Setup mirrors shared/spec/official_stage2_timing.md: a random CLIP ViT-L/14 text encoder (12 layers, 768/3072),
the offline CLIP tokenizer, layers 0-10, λ 4000, α 0.6, requests "An image of {}", "A photo of {}", "{}" over
ImageNet class names (timm metadata), random targets z*, synthetic SPD statistics A Aᵀ + 0.01 I
(A = randn(3072, 4096)/64, seed 1000+layer; cached on disk between runs, not timed). Each N runs in its own
process (peak RSS is per process). ``--solver factored`` (default, what the editor does) uses C's Cholesky
factor, computed once per model and cached like the statistics (its one-off cost is reported when computed);
``--solver direct`` factors λ'C + KKᵀ per layer as the official code. Timed: ``compute_deltas`` plus adding the deltas to the weights. Beside it,
the reference "one forward of all 3N prompts" (one batch padded to its longest prompt, as the official code).

    PYTHONPATH=$PWD python bench/bench_emcid_stage2.py [--ns 1,10,100,300,1000] [--threads 2] [--no-ref-forward]

Prints one JSON document.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

OFFICIAL_S = {1: 8.11, 10: 13.01, 100: 103.2, 300: 280.8}
OFFICIAL_RSS_GB = {1: 2.22, 10: 2.24, 100: 2.27, 300: 2.80}
LAYERS = list(range(11))


def class_names() -> list[str]:
    """One alphabetic lemma per ImageNet class (the first unused one), as many as possible."""
    import timm.data

    info = Path(timm.data.__file__).with_name("_info")
    synsets = (info / "imagenet_synsets.txt").read_text().split()
    lemmas = dict(line.split("\t", 1) for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines()
                  if "\t" in line)
    names, seen = [], set()
    for s in synsets:
        for lemma in (x.strip() for x in lemmas[s].split(",")):
            if re.fullmatch(r"[A-Za-z ]+", lemma) and lemma.lower() not in seen:
                seen.add(lemma.lower())
                names.append(lemma)
                break
    return names


def rss_gb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024 ** 2
    return float("nan")


def synthetic_covs(cache: Path):
    import torch
    from safetensors.torch import load_file, save_file

    path = cache / "synthetic_covs_3072.safetensors"
    if path.is_file():
        d = load_file(str(path))
        return {l: d[str(l)] for l in LAYERS}
    covs = {}
    for l in LAYERS:
        g = torch.Generator().manual_seed(1000 + l)
        a = torch.randn(3072, 4096, generator=g) / 64
        covs[l] = a @ a.T + 0.01 * torch.eye(3072)
    cache.mkdir(parents=True, exist_ok=True)
    save_file({str(l): c for l, c in covs.items()}, str(path))
    return covs


def factors_for(covs, cache: Path) -> tuple[dict, float | None]:
    """Cholesky factors of the C_l (the editor keeps them beside the statistics); seconds if computed now."""
    import torch  # noqa: F401
    from safetensors.torch import load_file, save_file

    from editors.emcid.stage2 import cov_factor

    path = cache / "synthetic_chol_3072.safetensors"
    if path.is_file():
        d = load_file(str(path))
        return {l: d[str(l)] for l in LAYERS}, None
    t0 = time.perf_counter()
    f = {l: cov_factor(c) for l, c in covs.items()}
    took = time.perf_counter() - t0
    save_file({str(l): c for l, c in f.items()}, str(path))
    return f, took


def single(n: int, threads: int, cache: Path, ref_forward: bool, solver: str) -> dict:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from editors.emcid.stage2 import compute_deltas
    from editors.hooks import subject_last_positions, text_layers
    from editors.requests import EditRequest
    from iceb.data.tokenizer import load_clip_tokenizer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    tok = load_clip_tokenizer()
    te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                      num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                      hidden_act="quick_gelu", projection_dim=768, bos_token_id=0, eos_token_id=2,
                                      pad_token_id=1)).eval()
    covs = synthetic_covs(cache)
    factors, factor_s = factors_for(covs, cache) if solver == "factored" else (None, None)
    names = class_names()
    half = len(names) // 2
    reqs = [EditRequest(names[i % len(names)], names[(i + half) % len(names)], seed=1234 + i) for i in range(n)]
    g = torch.Generator().manual_seed(123)
    z = torch.randn(n, 768, generator=g)
    rss_before = rss_gb()
    t0 = time.perf_counter()
    prompts, owners, positions = [], [], []
    for c, r in enumerate(reqs):
        prompts += r.source_prompts()
        owners += [c] * len(r.templates)
        positions += subject_last_positions(tok, r.templates, r.source)
    out = compute_deltas(te, tok, prompts, owners, positions, z, LAYERS, covs, 4000.0, 0.6, factors=factors)
    with torch.no_grad():
        new = {l: (text_layers(te)[l].mlp.fc2.weight.double() + out.deltas[l]).float() for l in LAYERS}
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    del new
    rec = {"n": n, "solver": solver, "stage2_s": round(wall, 3), "solve_s": round(out.solve_seconds, 3),
           "walk_s": round(wall - out.solve_seconds, 3), "prompts": out.n_prompts, "tokens": out.n_tokens,
           "rss_before_gb": round(rss_before, 3), "peak_rss_gb": round(peak, 3)}
    if factor_s is not None:
        rec["factorisation_once_s"] = round(factor_s, 3)
    if ref_forward:
        ids = tok(prompts, padding=True, truncation=True, return_tensors="pt").input_ids
        t1 = time.perf_counter()
        with torch.no_grad():
            te(ids)
        rec["ref_forward_s"] = round(time.perf_counter() - t1, 3)
        rec["ref_shape"] = list(ids.shape)
        rec["ratio_to_ref_forward"] = round(wall / rec["ref_forward_s"], 3)
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description="EMCID stage II benchmark (SD-1.4 text-encoder size, random weights)")
    ap.add_argument("--ns", default="1,10,100,300,1000")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-ref-forward", action="store_true", help="skip the one-forward reference timing")
    ap.add_argument("--cache", default=os.environ.get("ICEB_BENCH_CACHE", "/tmp/iceb_bench_emcid"))
    ap.add_argument("--solver", choices=["factored", "direct"], default="factored",
                    help="factored: C's Cholesky factor precomputed once per model (as the editor caches it) and "
                         "the push-through solve; direct: factor λ'C + KKᵀ per layer, as the official code")
    ap.add_argument("--single", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.single is not None:
        print(json.dumps(single(args.single, args.threads, Path(args.cache), not args.no_ref_forward, args.solver)))
        return
    results = []
    for n in (int(x) for x in args.ns.split(",") if x.strip()):
        cmd = [sys.executable, __file__, "--single", str(n), "--threads", str(args.threads), "--cache", args.cache,
               "--solver", args.solver]
        if args.no_ref_forward:
            cmd.append("--no-ref-forward")
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
        if proc.returncode != 0:
            results.append({"n": n, "error": proc.stderr[-2000:]})
            continue
        rec = json.loads(proc.stdout.strip().splitlines()[-1])
        if n in OFFICIAL_S:
            rec["official_s"] = OFFICIAL_S[n]
            rec["official_peak_rss_gb"] = OFFICIAL_RSS_GB[n]
            rec["speedup_vs_official"] = round(OFFICIAL_S[n] / rec["stage2_s"], 2)
        results.append(rec)
        print(json.dumps(rec), file=sys.stderr, flush=True)
    print(json.dumps({"bench": "emcid_stage2", "threads": args.threads, "cpu_count": os.cpu_count(),
                      "load_avg_at_end": os.getloadavg(), "layers": LAYERS, "lambda": 4000, "alpha": 0.6,
                      "results": results,
                      "note": "official figures: shared/spec/official_stage2_timing.md (same CPU, 2 threads)"},
                     indent=1))


if __name__ == "__main__":
    main()
