"""Benchmark EMCID stage I: seconds per concept, cold (training images included), batched.

Runs on a model spec (default ``toy``) with the editor's hparams for its family (the preset's step count
unless ``--steps``). Measures ``optimise_batch`` on K concepts of the world's rectification task (``smoke``
on ImageNet models) in one batch; ``--singles`` also times each concept alone (same seeds, so the same δ up
to float reordering); ``--against-rev REV`` times the stage-I module of a git revision of this checkout on
the same requests in the same process, alternating (new, old, new, old), and prints the largest relative δ
difference between the two, so a speed-up is a ratio measured in one sitting, not against another day.

    python bench/bench_emcid_stage1.py [--model toy] [--concepts 8] [--steps N] [--against-rev HEAD~1]

Prints one JSON document.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine

REPO = Path(__file__).resolve().parents[1]


def module_at(rev: str):
    """``editors/emcid/stage1.py`` as it was at ``rev`` (imported from a temporary copy)."""
    text = subprocess.run(["git", "show", f"{rev}:editors/emcid/stage1.py"], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "stage1_at_rev.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("stage1_at_rev", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["stage1_at_rev"] = mod
    spec.loader.exec_module(mod)
    return mod


def rel_diff(a, b) -> float:
    return max(float((x.delta - y.delta).norm() / y.delta.norm().clamp_min(1e-30)) for x, y in zip(a, b))


def main() -> None:
    ap = argparse.ArgumentParser(description="EMCID stage I: seconds per concept, cold, batched")
    ap.add_argument("--model", default="toy")
    ap.add_argument("--concepts", type=int, default=8)
    ap.add_argument("--steps", type=int, default=None, help="default: the preset's v_num_grad_steps")
    ap.add_argument("--threads", type=int, default=None, help="default: torch's (all cores)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--singles", action="store_true", help="also time each concept alone")
    ap.add_argument("--against-rev", default=None, help="a git revision whose stage I to time beside this one")
    args = ap.parse_args()

    import torch

    from editors.emcid import EMCIDEditor
    from editors.emcid import stage1 as current
    from iceb.models import load_model
    from iceb.tasks import get_task

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, device=args.device)
    task = "rectification" if loaded.world == "toy" else "smoke"
    reqs = list(get_task(task, world=loaded.world).build(args.concepts).requests)[:args.concepts]
    hp = EMCIDEditor.load_hparams(loaded.family)
    if args.steps is not None:
        hp = hp.replace(v_num_grad_steps=args.steps)
    s = hp.stage1()
    out = {"bench": "emcid_stage1", "model": args.model, "device": args.device, "concepts": len(reqs),
           "steps": s.steps, "train_steps": s.train_steps or 50, "machine": machine(),
           "load_avg_before": os.getloadavg()}

    def timed(mod, rs):
        settings = mod.Stage1Settings(**vars(s))
        t0 = time.perf_counter()
        res = mod.optimise_batch(loaded.pipe, rs, settings)
        return time.perf_counter() - t0, res

    t, batched = timed(current, reqs)
    out["batched_s_per_concept"] = round(t / len(reqs), 4)
    if args.against_rev:
        old = module_at(args.against_rev)
        times = {"this": [t], args.against_rev: []}
        for mod, key in ((old, args.against_rev), (current, "this"), (old, args.against_rev)):
            dt, res = timed(mod, reqs)
            times[key].append(dt)
            if mod is old:
                ref = res
        best = {k: min(v) / len(reqs) for k, v in times.items()}
        out["against_rev"] = {"rev": args.against_rev, "s_per_concept": {k: [round(x / len(reqs), 4) for x in v]
                                                                          for k, v in times.items()},
                              "speedup_best_of": round(best[args.against_rev] / best["this"], 3),
                              "max_rel_delta_diff": rel_diff(batched, ref)}
    if args.singles:
        t0 = time.perf_counter()
        singles = [current.optimise_batch(loaded.pipe, [r], s)[0] for r in reqs]
        t_single = time.perf_counter() - t0
        out.update(single_s_per_concept=round(t_single / len(reqs), 4),
                   batched_speedup=round(t_single / t, 2), max_rel_delta_diff_singles=rel_diff(batched, singles))
    out["load_avg_after"] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
