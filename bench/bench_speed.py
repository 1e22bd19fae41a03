"""SPEED at Stable Diffusion 1.4 sizes on this CPU; prints JSON.

Random weights at SD-1.4 shapes (as ``bench_uce.py``): a CLIP ViT-L/14 text encoder (12 layers, 768 wide, 77
tokens) and the UNet's 16 cross-attention modules (SPEED edits their 16 ``to_v``: 768 -> 320/640/1280; the rest of
the UNet plays no part, so it is not built). N concepts are erased towards ``""`` with the official defaults
(``speed/sd-1.4.yaml``: IPF, DPA with 10 copies, threshold 0.1, IEC) against a retain set of ``--retain`` names
(default 1,352, the size of the official ``data/instance.csv``). Per N:

- ``floor_encode_s``: encoding the edit's distinct prompts once (targets, ``""``, the retain names), batched;
- ``edit_s``: the whole ``SPEEDEditor.edit`` split into ``encode_s`` (its own encoding, token picking, shuffle,
  k-means), ``projector_s`` (per matrix: IPF, DPA, C_r, its eigendecomposition) and ``solve_s`` (T and A, the 16
  closed forms, diagnostics), and ``edit_over_floor`` (target at N = 100: <= 1.5);
- above ``--full-max`` the encoder is not run: ``projector_s`` and ``solve_s`` come from stand-in keys of the same
  shapes (random rows; the solve's cost depends on shapes and the IPF/DPA counts), and the floor is estimated from
  the measured seconds per prompt (the rows say ``estimated``).

    PYTHONPATH=$PWD python bench/bench_speed.py --sizes 1,10,100,1000 [--retain 1352] [--full-max 100]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_uce import concept_names, gemm_gflops, sd_cross_attention_pipe  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,10,100,1000")
    ap.add_argument("--retain", type=int, default=1352, help="retain names (0: the official default [''])")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--full-max", type=int, default=100,
                    help="encode for real and run the whole edit up to this many concepts; above it, stand-in keys "
                         "and an estimated floor (marked estimated)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from editors.requests import EditRequest
    from editors.speed import SPEEDEditor, SpeedKeys, speed_names
    from editors.uce import encode_prompts
    from editors.weights import get_tensor
    from iceb.utils.timing import Timer

    pipe = sd_cross_attention_pipe()
    sizes = [int(s) for s in args.sizes.split(",")]
    names_all = concept_names(max(sizes) + args.retain)
    retain_names, pool = names_all[:args.retain], names_all[args.retain:]
    hp = SPEEDEditor.load_hparams("sd-1.4", overrides={"preserve": retain_names})
    editor = SPEEDEditor(hp, progress=False)
    weights = {n: get_tensor(pipe, n) for n in speed_names(pipe.unet, hp.params)}
    gflops_start = gemm_gflops()
    results = []
    rate = None  # seconds per encoded prompt, from the largest fully measured size
    for n in sizes:
        requests = [EditRequest(c, kind="erase") for c in pool[:n]]
        row: dict = {"concepts": n, "retain_names": args.retain, "matrices": len(weights)}
        if n <= args.full_max:
            prompts = [p for pair in editor.edit_pairs(requests) for p in pair] + editor.retain_texts(requests) + [""]
            with torch.no_grad():
                t = time.perf_counter()
                enc = encode_prompts(pipe, prompts, hp.encode_batch_size)
                floor = time.perf_counter() - t
            rate = floor / enc.emb.shape[0]
            row["prompts_encoded"] = int(enc.emb.shape[0])
            del enc
            t = time.perf_counter()
            res = editor.edit(pipe, requests)
            edit = time.perf_counter() - t
            timings, info = res.timings, res.info
            row.update(floor_encode_s=round(floor, 3), edit_s=round(edit, 3), edit_over_floor=round(edit / floor, 3))
        else:
            g = torch.Generator().manual_seed(hp.seed)
            m = 768
            keys = SpeedKeys(torch.randn(n, m, dtype=torch.float64), torch.randn(n, m, dtype=torch.float64),
                             torch.randn(max(args.retain, 76), m, dtype=torch.float64),
                             torch.randn(m, 1 + hp.iec_clusters, dtype=torch.float64), n)
            timer = Timer()
            _, info = editor.solve(weights, keys, g, timer)
            timings = timer.timings
            row["prompts_encoded"] = n + 1 + args.retain
            if rate is not None:
                est = rate * row["prompts_encoded"]
                row.update(estimated=True, floor_encode_s_est=round(est, 1),
                           edit_over_floor_est=round((est + timings["projector"] + timings["solve"]) / est, 3))
        row.update({f"{k}_s": round(v, 3) for k, v in timings.items()})
        ranks = [d["projector_rank"] for d in info["per_layer"].values()]
        kept = [d["retain_after_ipf"] for d in info["per_layer"].values()]
        row.update(projector_rank_min_max=[min(ranks), max(ranks)], retain_after_ipf_min_max=[min(kept), max(kept)])
        results.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({
        "bench": "speed", "hparams": "speed/sd-1.4.yaml (official defaults) + the retain names",
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "load_average_1m_at_end": os.getloadavg()[0],
        "float64_gemm_gflops_start_end": [gflops_start, gemm_gflops()],
        "note": "shared CPU: other processes may slow these timings", "results": results,
    }, indent=1))


if __name__ == "__main__":
    main()
