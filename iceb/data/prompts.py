"""Free-form prompts for ImageNet classes: deterministic, checked, with a seed each.

ICEB's released prompts are LLM sentences with no generation script. Ours are made from templates: the
class's WordNet category (from its hypernym ancestors: dog, bird, fish, vehicle, food, ...) picks scenes
that fit, and two prompt forms use the direct hypernym ("a tench, a kind of cyprinid, ...") and the gloss's
head ("a tench, freshwater dace-like game fish of Europe and western Asia, ..."). Candidates are tried in a
per-class seeded order and the first ``PER_CLASS`` that pass every check are kept:

- the class's primary name appears exactly once (whole word, case-insensitive);
- the prompt fits CLIP's 77 tokens (with start/end tokens, :func:`iceb.data.tokenizer.load_clip_tokenizer`);
- no duplicate prompt in the whole set;
- no *other class name*: the primary name of another ImageNet class, as a whole word or phrase
  (case-insensitive), after the class's own name is removed (so "tiger shark" may contain "tiger"). Aliases
  of other classes are not checked: many are common words ("beach", "jack").

Seeds: ``random.Random("iceb-prompts:" + wnid)`` draws 5 distinct ints in [0, 100000).
Files in ICEB's format (``imgnet_prompts.json``: records with ``class name``, ``text prompt``,
``random seed``, ``class id``) load with :func:`load_prompt_file` and are written by :func:`write_prompt_file`.
"""
from __future__ import annotations

import functools
import json
import random
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from iceb.data.split_bundle import PromptSeed

PER_CLASS = 5

#: (category, ancestor lemmas that select it); the first match in this order wins
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("dog", ("dog",)), ("cat", ("feline",)), ("bird", ("bird",)), ("fish", ("fish",)),
    ("reptile", ("reptile", "amphibian")), ("bug", ("arthropod",)), ("sea", ("invertebrate",)),
    ("animal", ("mammal", "animal")), ("fruit", ("fruit", "vegetable", "edible fruit")),
    ("food", ("food", "foodstuff", "dish", "nutriment")), ("plant", ("plant", "fungus")),
    ("boat", ("vessel", "boat")), ("aircraft", ("aircraft",)), ("vehicle", ("vehicle", "conveyance")),
    ("instrument", ("musical instrument",)), ("clothing", ("clothing", "covering", "garment")),
    ("place", ("geological formation", "structure", "building")),
    ("furniture", ("furniture", "furnishing")), ("device", ("device", "equipment", "instrumentality")),
)

SCENES: dict[str, tuple[str, ...]] = {
    "dog": ("playing fetch on a sunny lawn", "resting on a cozy rug by the fireplace", "trotting along a forest trail",
            "sitting patiently on a porch", "running through fresh snow", "sleeping in a wicker basket"),
    "cat": ("stalking through tall grass", "resting in the shade of a tree", "stretching on a warm rock",
            "watching from a tree branch", "prowling at dusk", "sitting on a windowsill"),
    "bird": ("perched on a branch in the morning light", "taking flight over a misty marsh",
             "foraging on the ground in a park", "resting on a fence post", "singing in a blooming tree",
             "standing at the edge of a pond"),
    "fish": ("swimming in clear water", "gliding past a rocky riverbed", "darting through sunlit water",
             "resting near the bottom of a pond", "swimming in a large aquarium", "in the shallows of a stream"),
    "reptile": ("basking on a sun-warmed rock", "resting among fallen leaves", "crawling over damp moss",
                "hiding in the grass near a stream", "resting on a log", "in the sand under a bright sky"),
    "bug": ("crawling on a green leaf", "resting on a flower petal", "on the bark of an old tree",
            "in the grass after rain", "on a twig in the garden", "under a bright summer sun"),
    "sea": ("in a tide pool among pebbles", "drifting through blue water", "resting on the ocean floor",
            "clinging to a rock underwater", "in an aquarium tank", "on wet sand at low tide"),
    "animal": ("standing in an open meadow", "walking through a quiet forest", "resting in the shade",
               "roaming across a grassy plain", "drinking from a river", "in its natural habitat at dawn"),
    "fruit": ("on a wooden kitchen counter", "piled in a market stall", "in a ceramic bowl by the window",
              "freshly picked in a basket", "sliced on a cutting board", "on a rustic farmhouse table"),
    "food": ("served on a white dish", "on a table in a cozy restaurant", "freshly made in a home kitchen",
             "ready to eat at a picnic", "arranged beautifully for a dinner party", "on a wooden board"),
    "plant": ("growing in a sunny garden", "in a forest clearing", "in a clay pot by a window",
              "covered in morning dew", "growing on the forest floor", "under soft afternoon light"),
    "boat": ("on calm blue water", "docked in a quiet harbor", "sailing under a clear sky",
             "moving across a wide river", "anchored near the coast", "on the open sea at sunset"),
    "aircraft": ("flying across a clear blue sky", "parked on an airfield", "high above the clouds",
                 "flying over green hills", "on display at a museum", "against an orange sunset"),
    "vehicle": ("parked on a city street", "driving down a country road", "in a parking lot",
                "on a quiet suburban street", "moving through light traffic", "parked in front of a house"),
    "instrument": ("on a stage under warm lights", "in a music studio", "being played at a concert",
                   "resting on a stand in a practice room", "in a music shop", "on display in a quiet room"),
    "clothing": ("displayed in a boutique", "worn by a person walking outside", "folded neatly on a bed",
                 "on a mannequin in a shop", "hanging in a wardrobe", "in a fashion photo shoot"),
    "place": ("under a bright blue sky", "seen from a distance at sunset", "surrounded by green trees",
              "in the soft light of early morning", "on a clear summer day", "under dramatic clouds"),
    "furniture": ("in a bright living room", "in a cozy bedroom", "in a modern apartment",
                  "in a furniture showroom", "next to a sunny window", "in a quiet study"),
    "device": ("on a wooden workbench", "on a shelf in a workshop", "in a well-lit room",
               "in use at home", "on display in a store", "on a clean table"),
    "object": ("on a wooden table", "in a well-lit room", "on display in a store", "outdoors on a sunny day",
               "on a shelf", "in everyday use"),
}

FORMS = ("A photo of {a} {name} {scene}.", "{A} {name} {scene}.", "A close-up photo of {a} {name} {scene}.",
         "A detailed picture of {a} {name} {scene}.", "{A} {name}, a kind of {hyper}, {scene}.",
         "{A} {name}, {gloss}, {scene}.", "A clear photograph of {a} {name} {scene}.")


def article(name: str) -> str:
    return "an" if name[:1].lower() in "aeiou" else "a"


def category(ancestor_names: Iterable[str]) -> str:
    names = set(ancestor_names)
    for cat, keys in CATEGORIES:
        if names & set(keys):
            return cat
    return "object"


def _word_re(name: str) -> re.Pattern:
    return re.compile(r"(?<![\w-])" + re.escape(name.lower()) + r"(?![\w-])")


@functools.lru_cache(maxsize=1)
def _other_names_re() -> tuple[dict[str, re.Pattern], re.Pattern]:
    from iceb.data.imagenet import imagenet_concepts

    names = sorted({c.name.lower() for c in imagenet_concepts()}, key=len, reverse=True)
    return {n: _word_re(n) for n in names}, re.compile(
        r"(?<![\w-])(" + "|".join(re.escape(n) for n in names) + r")(?![\w-])")


def check_prompt(prompt: str, name: str, tokenizer=None) -> str | None:
    """Why ``prompt`` fails the checks for class ``name`` (None when it passes; duplicates are checked by the caller)."""
    own = _word_re(name)
    low = prompt.lower()
    if len(own.findall(low)) != 1:
        return "class name does not appear exactly once"
    rest = own.sub(" | ", low)
    other = _other_names_re()[1].search(rest)
    if other:
        return f"names another class: {other.group(1)!r}"
    if tokenizer is not None and len(tokenizer(prompt).input_ids) > tokenizer.model_max_length:
        return "longer than 77 CLIP tokens"
    return None


def prompt_seeds(wnid: str, n: int = PER_CLASS) -> list[int]:
    return random.Random(f"iceb-prompts:{wnid}").sample(range(100000), n)


def candidates(name: str, wnid: str, cat: str, hyper: str, gloss: str) -> list[str]:
    rng = random.Random(f"iceb-prompt-order:{wnid}")
    scenes = list(SCENES[cat])
    rng.shuffle(scenes)
    head = gloss.split(";")[0].strip().rstrip(".")
    if len(head.split()) > 12:
        head = ""
    out = []
    for i, form in enumerate(FORMS):
        if "{gloss}" in form and not head:
            continue
        if "{hyper}" in form and (not hyper or hyper.lower() == name.lower()):
            continue
        scene = scenes[i % len(scenes)]
        a = article(name)
        out.append(form.format(a=a, A=a.capitalize(), name=name, scene=scene, hyper=hyper, gloss=head))
    for j, scene in enumerate(scenes):  # spares when some forms fail the checks
        out.append(f"{article(name).capitalize()} {name} {scene}, photographed in natural light.")
    return out


def generate_prompts(wordnet: Mapping[str, Any], per_class: int = PER_CLASS, tokenizer=None
                     ) -> dict[int, tuple[PromptSeed, ...]]:
    """``per_class`` checked prompts (as ``{}`` templates) with seeds for every ImageNet-1k class."""
    from iceb.data.imagenet import imagenet_concepts
    from iceb.data.tokenizer import load_clip_tokenizer

    tok = tokenizer or load_clip_tokenizer()
    seen: set[str] = set()
    out = {}
    for c in imagenet_concepts():
        info = wordnet["synsets"][c.wnid]
        cat = category(info["ancestor_names"])
        kept = []
        for text in candidates(c.name, c.wnid, cat, info["hypernym_name"], c.gloss):
            if text.lower() in seen or check_prompt(text, c.name, tok):
                continue
            seen.add(text.lower())
            kept.append(text)
            if len(kept) == per_class:
                break
        if len(kept) < per_class:
            raise RuntimeError(f"only {len(kept)} prompts pass the checks for class {c.id} ({c.name})")
        seeds = prompt_seeds(c.wnid, per_class)
        out[c.id] = tuple(PromptSeed(_slot(t, c.name), s) for t, s in zip(kept, seeds))
    return out


def _slot(text: str, name: str) -> str:
    m = _word_re(name).search(text.lower())
    return text[:m.start()] + "{}" + text[m.end():]


def load_prompt_file(path: str | Path) -> dict[int, tuple[PromptSeed, ...]]:
    """A prompt file in ICEB's format -> {class id: ``{}`` templates with seeds} (file order kept)."""
    from iceb.data.official import read_prompt_records, slot

    out: dict[int, list[PromptSeed]] = {}
    for r in read_prompt_records(path):
        text = r.text if "{}" in r.text else slot(r.text, r.class_name)
        out.setdefault(r.class_id, []).append(PromptSeed(text, r.seed))
    return {k: tuple(v) for k, v in out.items()}


def write_prompt_file(path: str | Path, prompts: Mapping[int, Sequence[PromptSeed]], names: Mapping[int, str]) -> None:
    """Write prompts in ICEB's ``imgnet_prompts.json`` layout (plain text, int seeds)."""
    from iceb.utils.io import write_text

    rows, idx = [], 0
    for cid, ps in prompts.items():
        for p in ps:
            rows.append({"class name": names[cid], "text prompt": p.template.replace("{}", names[cid]),
                         "random seed": p.seed, "idx": idx, "class id": cid})
            idx += 1
    write_text(path, json.dumps(rows, indent=1) + "\n")
