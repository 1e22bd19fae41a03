"""Run every benchmark and print one JSON document (each benchmark's own JSON under its name).

    python bench/run_all.py            # the figures in bench/README.md (tens of minutes on a 2-core CPU)
    python bench/run_all.py --quick    # small sizes, a few minutes

GPU parts run only where CUDA is available; elsewhere they are listed under "skipped" with the reason.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def plan(quick: bool, cuda: bool) -> tuple[list[tuple[str, list[str]]], dict[str, str]]:
    runs = [
        ("emcid_stage2", ["bench_emcid_stage2.py", "--ns", "1,10,100" if quick else "1,10,100,300,1000"]),
        ("uce", ["bench_uce.py", "--sizes", "1,100" if quick else "1,100,1000"]),
        ("emcid_stage1_tiny", ["bench_emcid_stage1.py", "--model", "tiny", "--concepts", "4" if quick else "8"]),
        ("esd_tiny", ["bench_esd.py", "--model", "tiny", "--iterations", "5" if quick else "20"]),
        ("generation_tiny", ["bench_generation.py", "--model", "tiny", "--repeats", "2" if quick else "5"]),
        ("statistics", ["bench_stats.py", "--captions", "200" if quick else "1000"]),
        ("metrics", ["bench_metrics.py", "--n", "2" if quick else "8"]),
    ]
    if (ROOT / "data" / "toy" / "model" / "model_index.json").is_file():
        runs.append(("generation_toy", ["bench_generation.py", "--model", "toy", "--repeats", "2" if quick else "5"]))
        runs.append(("emcid_stage1_toy", ["bench_emcid_stage1.py", "--model", "toy", "--concepts", "4" if quick else "8"]))
        runs.append(("attacks_toy", ["bench_attacks.py", "--targets", "2" if quick else "4"]))
    skipped = {}
    if cuda:
        runs.append(("emcid_stage1_gpu", ["bench_emcid_stage1.py", "--device", "cuda", "--model", "tiny"]))
        runs.append(("esd_gpu", ["bench_esd.py", "--device", "cuda", "--model", "tiny"]))
    else:
        skipped["gpu"] = "no CUDA device: stage I and ESD at SD-1.4 size on a GPU were not measured"
    return runs, skipped


def first_json(text: str):
    """The last top-level JSON document a benchmark printed."""
    start = text.rfind("\n{")
    for s in ([start + 1] if start >= 0 else []) + [text.find("{")]:
        try:
            return json.loads(text[s:])
        except (json.JSONDecodeError, ValueError):
            continue
    return None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated benchmark names")
    args = ap.parse_args()
    import torch

    runs, skipped = plan(args.quick, torch.cuda.is_available())
    only = {x for x in args.only.split(",") if x}
    out = {"skipped": skipped, "results": {}}
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for name, argv in runs:
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(HERE / argv[0]), *argv[1:]], capture_output=True, text=True,
                              env=env, cwd=ROOT)
        result = first_json(proc.stdout)
        out["results"][name] = result if proc.returncode == 0 and result is not None else {
            "error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-2000:]}
        out["results"][name]["wall_seconds"] = round(time.perf_counter() - t0, 1)
        print(f"[bench] {name}: {out['results'][name]['wall_seconds']} s", file=sys.stderr)
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
