"""The 1000 ImageNet-1k classes: WordNet id, names (primary name + aliases) and gloss, read from the
metadata that timm ships (``timm/data/_info``), so no download and no WordNet install is needed.

Names come from ``imagenet_synset_to_lemma.txt``, which equals WordNet 3.0's lemma lists; glosses from
``imagenet_synset_to_definition.txt``; the class order from ``imagenet_synsets.txt`` (standard indices).

Compared with ICEB's label source, ``id2label`` of ``google/vit-base-patch16-224``
(``vit_classifier_config.json``), the names are identical for all 1000 classes once each comma-separated
synonym is stripped (checked by :func:`compare_with_vit_labels`; ``tests/test_concepts.py`` runs it on the
reference file). The only differences are in spelling of the raw string: ICEB splits ``id2label`` on ","
without stripping, so every synonym after the first carries a leading space (" Tinca tinca"); we strip.
Two primary names are shared by two classes each: "crane" (134, the bird; 517, the machine) and
"maillot" (638 "maillot"; 639 "maillot, tank suit"), which is why ICEB's ``class2id.json`` has 998 entries.
"""
from __future__ import annotations

import functools
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from iceb.utils.paths import DATA_DIR

IMAGENET_DATA_DIR = DATA_DIR / "imagenet"


def timm_info_dir() -> Path:
    import timm.data

    path = Path(timm.data.__file__).parent / "_info"
    if not (path / "imagenet_synsets.txt").is_file():
        raise FileNotFoundError(f"timm's ImageNet metadata is missing from {path}; reinstall timm (>= 0.9)")
    return path


@dataclass(frozen=True)
class ImageNetConcept:
    """One ImageNet-1k class. ``names[0]`` is the primary name (ICEB's "class name")."""

    id: int
    wnid: str
    names: tuple[str, ...]
    gloss: str

    @property
    def name(self) -> str:
        return self.names[0]

    @property
    def aliases(self) -> tuple[str, ...]:
        return self.names[1:]


def _read_table(path: Path) -> dict[str, str]:
    out = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            key, _, value = line.rstrip("\n").partition("\t")
            if key:
                out[key] = value
    return out


@functools.lru_cache(maxsize=1)
def imagenet_concepts() -> tuple[ImageNetConcept, ...]:
    """The 1000 classes in standard index order."""
    info = timm_info_dir()
    wnids = [w.strip() for w in (info / "imagenet_synsets.txt").read_text().split("\n") if w.strip()]
    if len(wnids) != 1000:
        raise ValueError(f"{info / 'imagenet_synsets.txt'} lists {len(wnids)} synsets, not 1000")
    lemmas = _read_table(info / "imagenet_synset_to_lemma.txt")
    glosses = _read_table(info / "imagenet_synset_to_definition.txt")
    out = []
    for i, w in enumerate(wnids):
        if w not in lemmas:
            raise ValueError(f"timm's imagenet_synset_to_lemma.txt has no entry for {w} (class {i})")
        names = tuple(s.strip() for s in lemmas[w].split(",") if s.strip())
        out.append(ImageNetConcept(i, w, names, glosses.get(w, "").strip()))
    return tuple(out)


def duplicate_primary_names() -> dict[str, list[int]]:
    """Primary names shared by several classes: {"crane": [134, 517], "maillot": [638, 639]}."""
    by = defaultdict(list)
    for c in imagenet_concepts():
        by[c.name].append(c.id)
    return {k: v for k, v in by.items() if len(v) > 1}


def vit_synonyms(label: str) -> list[str]:
    """ICEB's split of an ``id2label`` entry: on ",", without stripping (so aliases keep a leading space)."""
    return label.split(",")


@dataclass
class VitComparison:
    n_classes: int
    identical_after_strip: int
    differences: list[dict[str, Any]] = field(default_factory=list)  # classes whose stripped names differ
    leading_space_synonyms: int = 0  # synonyms that ICEB's raw split leaves with a leading space
    multi_name_classes: int = 0
    duplicate_primary_names: dict[str, list[int]] = field(default_factory=dict)


def compare_with_vit_labels(id2label: Mapping[str, str] | Mapping[int, str]) -> VitComparison:
    """Compare timm's names with a ViT ``id2label`` mapping (ICEB's ``vit_classifier_config.json``)."""
    concepts = imagenet_concepts()
    labels = {int(k): v for k, v in id2label.items()}
    if sorted(labels) != list(range(len(concepts))):
        raise ValueError(f"id2label has {len(labels)} entries; expected ids 0..{len(concepts) - 1}")
    res = VitComparison(len(concepts), 0)
    dup = defaultdict(list)
    for c in concepts:
        raw = vit_synonyms(labels[c.id])
        stripped = tuple(s.strip() for s in raw)
        res.leading_space_synonyms += sum(1 for s in raw if s != s.lstrip())
        res.multi_name_classes += len(raw) > 1
        dup[stripped[0]].append(c.id)
        if stripped == c.names:
            res.identical_after_strip += 1
        else:
            res.differences.append({"id": c.id, "timm": list(c.names), "vit": list(stripped)})
    res.duplicate_primary_names = {k: v for k, v in dup.items() if len(v) > 1}
    return res


def load_vit_id2label(path: str | Path) -> dict[int, str]:
    d = json.loads(Path(path).read_text())
    if "id2label" not in d:
        raise ValueError(f"{path} has no 'id2label' key")
    return {int(k): v for k, v in d["id2label"].items()}


@functools.lru_cache(maxsize=1)
def wordnet_info() -> dict[str, Any]:
    """Shipped WordNet 3.0 facts for the 1000 classes (``data/imagenet/wordnet_1k.json``): per wnid the
    ancestors with their hypernym distance, and the ancestors' lemmas. Made by ``scripts/build_splits.py
    --wordnet DIR`` from Debian's ``wordnet-base``; read-only here."""
    path = IMAGENET_DATA_DIR / "wordnet_1k.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; rebuild with 'python scripts/build_splits.py --wordnet "
                                f"/usr/share/wordnet' (apt-get install wordnet-base)")
    return json.loads(path.read_text())
