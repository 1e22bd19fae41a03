"""Benchmark EMCID stage I: seconds per concept, batched versus one concept at a time.

Runs on a model spec (default ``tiny``) with the editor's hparams for its family, overridable. Measures
``optimise_batch`` on K concepts in one batch and on each alone (same seeds, so the same δ up to float
reordering; the max relative δ difference is printed too).

    PYTHONPATH=$PWD python bench/bench_emcid_stage1.py [--model tiny] [--concepts 8] [--steps 20] [--threads 1]

Prints one JSON document.
"""
from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description="EMCID stage I: batched vs one-at-a-time seconds per concept")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--concepts", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import torch

    from editors.emcid import EMCIDEditor
    from editors.emcid.stage1 import optimise_batch
    from editors.requests import EditRequest
    from iceb.models import load_model

    torch.set_num_threads(args.threads)
    loaded = load_model(args.model, device=args.device)
    hp = EMCIDEditor.load_hparams(loaded.family).replace(v_num_grad_steps=args.steps)
    s = hp.stage1()
    words = ["cat", "dog", "apple", "orange", "car", "bicycle", "chair", "table", "tree", "flower", "house",
             "castle", "boat", "airplane", "guitar", "piano", "cup", "bottle", "horse", "cow"]
    reqs = [EditRequest(words[i % len(words)], words[(i + 7) % len(words)], seed=100 + i)
            for i in range(args.concepts)]
    optimise_batch(loaded.pipe, reqs[:1], s.__class__(**{**s.__dict__, "steps": 1}))  # warm-up
    t0 = time.perf_counter()
    batched = optimise_batch(loaded.pipe, reqs, s)
    t_batch = time.perf_counter() - t0
    t0 = time.perf_counter()
    singles = [optimise_batch(loaded.pipe, [r], s)[0] for r in reqs]
    t_single = time.perf_counter() - t0
    diff = max(float((a.delta - b.delta).norm() / b.delta.norm().clamp_min(1e-30)) for a, b in zip(batched, singles))
    print(json.dumps({
        "bench": "emcid_stage1", "model": args.model, "device": args.device, "threads": args.threads,
        "concepts": args.concepts, "steps": s.steps, "train_steps": s.train_steps, "train_size": s.train_size,
        "batched_s_per_concept": round(t_batch / args.concepts, 4),
        "single_s_per_concept": round(t_single / args.concepts, 4),
        "speedup": round(t_single / t_batch, 2), "max_rel_delta_diff": diff,
        "load_avg": os.getloadavg()}, indent=1))


if __name__ == "__main__":
    main()
