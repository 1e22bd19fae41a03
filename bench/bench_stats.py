"""Captions per second for the second-moment statistics at SD-1.4 text-encoder size (random weights).

All 12 fc2 inputs are collected in one pass over the corpus, as editors.stats does. Captions are
synthetic sentences of COCO-like length (10-20 words) built from ImageNet class names, so the number is
about the encoder and the accumulation, not about a corpus on disk. Usage:
    python bench/bench_stats.py [--captions 1000] [--batch 100]
"""
from __future__ import annotations

import argparse
import random
import time

from common import emit, peak_rss_gb, sd14_text_encoder


def synthetic_captions(n: int, seed: int = 0) -> list[str]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    names = [info.index_to_description(i).split(",")[0] for i in range(1000)]
    rng = random.Random(seed)
    scenes = ["on a wooden table", "in a busy street", "next to a window", "in the park at sunset",
              "on a snowy mountain", "in a small kitchen", "near the river bank", "under a blue sky"]
    verbs = ["sitting", "standing", "lying", "resting", "shown", "photographed"]
    return [f"a {rng.choice(['photo', 'picture', 'close-up', 'view'])} of a {rng.choice(names)} "
            f"{rng.choice(verbs)} {rng.choice(scenes)} with a {rng.choice(names)} nearby" for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--captions", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=100)
    args = ap.parse_args()

    from editors.hooks import text_layers
    from editors.stats import collect_second_moments
    from iceb.data.tokenizer import load_clip_tokenizer

    te, tok = sd14_text_encoder(), load_clip_tokenizer()
    modules = {f"layers.{i}.mlp.fc2": layer.mlp.fc2 for i, layer in enumerate(text_layers(te))}
    texts = synthetic_captions(args.captions)
    collect_second_moments(te, tok, modules, texts[: args.batch], args.batch, progress=False)  # warm-up
    t0 = time.perf_counter()
    _, tokens = collect_second_moments(te, tok, modules, texts, args.batch, progress=False)
    seconds = time.perf_counter() - t0
    emit("second_moment_statistics", {
        "captions": len(texts), "tokens": tokens, "layers": len(modules), "seconds": round(seconds, 2),
        "captions_per_second": round(len(texts) / seconds, 1),
        "hours_for_100k_captions": round(100_000 / (len(texts) / seconds) / 3600, 2),
        "peak_rss_gb": round(peak_rss_gb(), 2)})


if __name__ == "__main__":
    main()
