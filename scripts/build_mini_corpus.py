"""Build ``data/captions/mini.txt``: a small generic caption corpus for cheap layer statistics (``tiny`` runs).

Captions are composed from ImageNet class names (the first lemma of each synset, from the metadata that timm
ships) and simple scene templates, sampled with a fixed seed, so the file is reproducible without any
download. It stands in for CCS/COCO only where the statistics' quality does not matter (tests, tiny models).

    python scripts/build_mini_corpus.py [--n 600] [--seed 0] [--out data/captions/mini.txt]
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

SCENES = [
    "a photo of a {}", "a close-up photo of a {}", "a {} on a wooden table", "a {} in the middle of a field",
    "a blurry picture of a {}", "a {} next to a red car", "two people looking at a {}", "a painting of a {}",
    "a {} under a cloudy sky", "a small {} near the window", "a black and white photo of a {}",
    "a {} in a city street at night", "a child holding a {}", "a {} lying on the grass", "an old {} in a museum",
    "a {} and a dog in a park", "a bright photo of a large {}", "a {} on the beach at sunset",
    "a cartoon drawing of a {}", "a {} in the snow",
]
GENERIC = [
    "a man riding a bicycle down the street", "a kitchen with white cabinets and a stove",
    "a group of people standing around a table", "a plate of food with rice and vegetables",
    "a living room with a couch and a television", "a train traveling down the tracks",
    "a woman talking on a cell phone", "a bowl of fruit on a counter", "a city skyline at dusk",
    "an empty road through the mountains", "a bathroom with a sink and a mirror", "a crowd at a concert",
]


def imagenet_names() -> list[str]:
    """First lemma of each ImageNet-1k synset, in class order (timm's shipped metadata)."""
    import timm.data

    info = Path(timm.data.__file__).with_name("_info")
    synsets = (info / "imagenet_synsets.txt").read_text().split()
    lemmas = dict(line.split("\t", 1) for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines()
                  if "\t" in line)
    return [lemmas[s].split(",")[0].strip() for s in synsets]


def build(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    names = imagenet_names()
    captions = list(GENERIC)
    while len(captions) < n:
        captions.append(rng.choice(SCENES).format(rng.choice(names)))
    return captions[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "data" / "captions" / "mini.txt"))
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(build(args.n, args.seed)) + "\n")
    print(f"wrote {args.n} captions to {out}")


if __name__ == "__main__":
    main()
