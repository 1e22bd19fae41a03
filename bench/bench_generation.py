"""Overhead of the harness's generation path against a bare diffusers loop (prints JSON).

Both sides render the same prompts with the same per-prompt CPU generators, model and batch size; the
harness side is ``iceb.generation.generate`` (scheduler check, batching, per-prompt generators, uint8
conversion), the bare side is ``pipe(batch, generator=[...], output_type="np")`` in a loop. Caching, file
writes and scoring are not part of either. Repeats alternate the two sides so drifting machine load hits
both alike; the ratio is of median throughputs. Target: ratio >= 0.95.

    PYTHONPATH=$PWD python bench/bench_generation.py --model tiny --images 64 --repeats 5
"""
from __future__ import annotations

import argparse
import json
import statistics
import time


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="tiny, toy, a folder or a hub id")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=None, help="default: the model's generation batch size")
    ap.add_argument("--steps", type=int, default=None, help="default: the model's generation steps")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default=None)
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from iceb.generation import generate
    from iceb.models import load_model

    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    pipe = loaded.pipe
    gen = loaded.generation.replace(batch_size=args.batch_size, num_inference_steps=args.steps)
    subjects = ["cat", "dog", "apple", "car", "tree", "house", "boat", "guitar"]
    prompts = [f"A photo of {subjects[i % len(subjects)]} number {i}" for i in range(args.images)]
    seeds = [1000 + i for i in range(args.images)]
    pipe.set_progress_bar_config(disable=True)
    sync = torch.cuda.synchronize if pipe.device.type == "cuda" else (lambda: None)

    def harness() -> list:
        return generate(pipe, prompts, seeds, gen, progress=False)

    def bare() -> list:
        out = []
        for i in range(0, len(prompts), gen.batch_size):
            gens = [torch.Generator("cpu").manual_seed(s) for s in seeds[i:i + gen.batch_size]]
            out.extend(pipe(prompts[i:i + gen.batch_size], height=gen.height, width=gen.width,
                            num_inference_steps=gen.num_inference_steps, guidance_scale=gen.guidance_scale,
                            generator=gens, output_type="np").images)
        return out

    def timed(fn):
        sync()
        t0 = time.perf_counter()
        res = fn()
        sync()
        return res, time.perf_counter() - t0

    h_img, _ = timed(harness)  # warm-up (and the images to compare)
    b_img, _ = timed(bare)
    same = all(np.array_equal(a, (np.clip(b, 0, 1) * 255).round().astype(np.uint8)) for a, b in zip(h_img, b_img))
    th, tb = [], []
    for r in range(args.repeats):
        for name, fn in ((("harness", harness), ("bare", bare)) if r % 2 == 0 else (("bare", bare), ("harness", harness))):
            _, dt = timed(fn)
            (th if name == "harness" else tb).append(args.images / dt)
    result = {
        "bench": "generation_overhead", "model": loaded.spec, "device": str(pipe.device),
        "dtype": str(pipe.unet.dtype), "images": args.images, "batch_size": gen.batch_size,
        "steps": gen.num_inference_steps, "height": gen.height, "width": gen.width, "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "harness_images_per_s": statistics.median(th), "bare_images_per_s": statistics.median(tb),
        "harness_all": [round(x, 3) for x in th], "bare_all": [round(x, 3) for x in tb],
        "ratio": statistics.median(th) / statistics.median(tb), "target": 0.95,
        "identical_images": same,
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
