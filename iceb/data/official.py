"""EMCID's official ICEB data, downloaded from the pinned repository (or read from a local folder) and
normalised into typed records and a :class:`~iceb.data.split_bundle.SplitBundle` (world ``imagenet``).

Where the files come from, first match wins: the ``data_dir`` argument, ``$ICEB_OFFICIAL_DATA``, else the
user cache, filled on demand from ``EMCID_RAW/data/iceb_data/<file>`` (commit 10a392a, sha256-checked).

What the released files hold (and the quirks normalised here):

- ``imgnet_aug_edit.json``: the 300 edit classes x 5 free-form prompts with ``{}`` for the class name,
  in the official edit order, plus ``dest``/``dest id``. Two templates hold no ``{}`` (broccoli and
  spaghetti squash: the capitalised name was not replaced); they are kept as released, so their prompts do
  not name the concept, as in the official runs.
- ``imgnet_aug_test.json``: the 366 holdout classes x 5 plain prompts. We turn each into a template by
  replacing the class name (case-sensitive, every occurrence) with ``{}``; filling the name back gives the
  released text exactly (a few prompts name the class only in another case and keep no slot).
- ``arbitrary_train.csv``: per edit, ``seed_train`` and the first 3 prompt seeds; list columns are Python
  literals (``ast.literal_eval``) mixing ``int`` and ``str`` seeds; all seeds become ``int``.
- ``rectification_val.csv``: the 143 rectification requests (102 classes) with their 5 lowercased
  ``{}`` prompts. It has no ``seed_train``; we take it from the older ``rectification_train.csv`` where the
  (alias, class) row is there (141 of 143) and otherwise from :func:`fallback_seed` (documented, not
  official). Its lowercased prompts are kept per class in ``Concept.info["rectification_prompts"]``.
- ``vit_classifier_config.json``: ``id2label``; ICEB splits synonyms on "," without stripping, so aliases
  carry a leading space; we strip them (CLIP's tokenizer collapses whitespace, so token ids are the same).
"""
from __future__ import annotations

import ast
import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iceb.data.split_bundle import Concept, EditPair, PromptSeed, Rectification, SplitBundle
from iceb.utils.download import EMCID_COMMIT, EMCID_RAW, fetch
from iceb.utils.paths import cache_dir

ENV_VAR = "ICEB_OFFICIAL_DATA"
REMOTE_DIR = "data/iceb_data"
#: the released files this loader reads, with their sha256 at the pinned commit
FILES: dict[str, str] = {
    "imgnet_aug_edit.json": "d77ebddfed8c669b996792913db8ba071d79810015a02dc302e5cdf8187e4b99",
    "imgnet_aug_test.json": "0d4a18d7568ad1d49ae4fcc72501b752ab640e9f18b63d5ff07b842f057296a0",
    "arbitrary_train.csv": "b7740a4007a93340690d89ede0318c4b86f9228dab64eaba8605452b5130be06",
    "arbitrary_val.csv": "e5a83388bb28a7aa23914a92aa0463b20a181a5c55b06d010d9d974626f928f1",
    "rectification_val.csv": "164f3a4675bcd2d66d1297b85197520a1fdf812856a2028712cee8cf60aa8d6b",
    "rectification_train.csv": "e1706887d8667f169f5d0e91dc857081059ed0536d559c2029e06668a659fc96",
    "vit_classifier_config.json": "41a4e0233650534ee25af52bb9641ec244671838b01c0e1a7d99ab74e3c0a22e",
    "imgnet_prompts_cls.json": "70e3956298d33fba24ec51cbd5c9ed91f03a01a4532f239b1099e75d8d8ec26d",
    "imgnet_prompts.json": "94666e1fb3a04b19e94dc76176422c72ce10b0a6398922cc17b999740dfe268a",
}
#: EMCID's test.py edit counts for AICE, and the rectification script's count
ACE_DEFAULT_EDITS = (1, 5, 10, 20, 30, 40, 50, 100, 150, 200, 250, 300)
RECTIFICATION_MAX = 140


class OfficialDataError(ValueError):
    """A released file is missing a field or disagrees with another released file."""


def fallback_seed(*parts: Any) -> int:
    """A deterministic seed in [0, 10000) from text (sha256), for values the released files do not record.

    A frozen derivation (not :func:`iceb.utils.hashing.seed_from`): the shipped splits were built with it."""
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest(), 16) % 10000


# ------------------------------------------------------------------------------------------------
# locating files
# ------------------------------------------------------------------------------------------------
def official_url(filename: str) -> str:
    return f"{EMCID_RAW}/{REMOTE_DIR}/{filename}"


def official_file(filename: str, data_dir: str | Path | None = None, download: bool = True) -> Path:
    """The path of one released file: from ``data_dir``/``$ICEB_OFFICIAL_DATA``, else the cache (downloaded)."""
    if filename not in FILES:
        raise KeyError(f"{filename!r} is not one of the official ICEB files: {sorted(FILES)}")
    local = data_dir if data_dir is not None else os.environ.get(ENV_VAR) or None
    if local is not None:
        path = Path(local) / filename
        if not path.is_file():
            raise FileNotFoundError(f"official ICEB file {filename} is not in {local} (from "
                                    f"{'data_dir' if data_dir is not None else '$' + ENV_VAR}); get it from "
                                    f"{official_url(filename)}")
        return path
    dest = cache_dir() / "emcid" / EMCID_COMMIT[:12] / REMOTE_DIR / filename
    if dest.is_file():
        return dest
    if not download:
        raise FileNotFoundError(f"official ICEB file {filename} is not cached at {dest}")
    return fetch(official_url(filename), dest, sha256=FILES[filename],
                 local_hint=f"Download EMCID's data/iceb_data/ yourself and point ${ENV_VAR} (or data_dir=) at "
                            f"that folder to use a local copy.")


# ------------------------------------------------------------------------------------------------
# typed records
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OfficialPrompt:
    class_id: int
    class_name: str
    text: str  # as released: a "{}" template in imgnet_aug_edit.json, plain text elsewhere
    seed: int
    idx: int | None = None
    dest: str | None = None
    dest_id: int | None = None


@dataclass(frozen=True)
class OfficialRequest:
    """A row of arbitrary_*.csv or rectification_*.csv."""

    source: str
    dest: str
    source_id: int
    dest_id: int
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    seed_train: int | None = None


def _seed(value: Any, where: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise OfficialDataError(f"{where}: seed {value!r} is not an integer") from None


def _literal_list(text: str, where: str) -> list:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as err:
        raise OfficialDataError(f"{where}: cannot parse list column {text!r}: {err}") from None
    if not isinstance(value, (list, tuple)):
        raise OfficialDataError(f"{where}: expected a list, got {text!r}")
    return list(value)


def read_prompt_records(path: str | Path) -> list[OfficialPrompt]:
    """Records of an ICEB prompt file (``imgnet_prompts*.json``, ``imgnet_aug_*.json``)."""
    path = Path(path)
    rows = json.loads(path.read_text())
    out = []
    for i, r in enumerate(rows):
        where = f"{path.name} record {i}"
        try:
            out.append(OfficialPrompt(int(r["class id"]), r["class name"], r["text prompt"],
                                      _seed(r["random seed"], where), r.get("idx"),
                                      r.get("dest"), int(r["dest id"]) if "dest id" in r else None))
        except KeyError as err:
            raise OfficialDataError(f"{where} has no field {err}") from None
    return out


def read_request_csv(path: str | Path) -> list[OfficialRequest]:
    path = Path(path)
    out = []
    with open(path, newline="", encoding="utf-8") as fh:
        for i, r in enumerate(csv.DictReader(fh)):
            where = f"{path.name} row {i + 2}"
            try:
                out.append(OfficialRequest(
                    r["source"], r["dest"], int(r["source id"]), int(r["dest id"]),
                    tuple(_literal_list(r["prompts"], where)),
                    tuple(_seed(s, where) for s in _literal_list(r["seeds"], where)),
                    _seed(r["seed_train"], where) if r.get("seed_train") not in (None, "") else None))
            except KeyError as err:
                raise OfficialDataError(f"{where} has no column {err}") from None
    return out


def group_by_class(records: list[OfficialPrompt]) -> dict[int, list[OfficialPrompt]]:
    """Records per class id, classes in first-appearance order, prompts in file order."""
    out: dict[int, list[OfficialPrompt]] = {}
    for r in records:
        out.setdefault(r.class_id, []).append(r)
    return out


def slot(text: str, name: str) -> str:
    """ICEB's templating: the class name (case-sensitive, every occurrence) becomes ``{}``."""
    return text.replace(name, "{}")


def fill(template: str, name: str) -> str:
    """Inverse of :func:`slot`; a template without a slot is returned unchanged (as ``str.format`` does)."""
    return template.replace("{}", name)


@dataclass
class OfficialICEB:
    """The released ICEB split, typed. ``edit``/``holdout``: prompts per class in the official order."""

    edit: dict[int, list[OfficialPrompt]]
    holdout: dict[int, list[OfficialPrompt]]
    train: list[OfficialRequest]
    val: list[OfficialRequest]
    rectification: list[OfficialRequest]
    rectification_train: list[OfficialRequest]
    id2label: dict[int, str]
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def pool(self) -> list[int]:
        return sorted([*self.edit, *self.holdout])

    def names(self, cid: int) -> list[str]:
        """All names of a class, stripped (ICEB's raw split leaves a leading space on aliases)."""
        return [s.strip() for s in self.id2label[cid].split(",")]

    def check(self) -> None:
        """Cross-check the released files against each other; raise on any disagreement."""
        if set(self.edit) & set(self.holdout):
            raise OfficialDataError("edit and holdout classes overlap")
        order = list(self.edit)
        for name, rows in (("arbitrary_train.csv", self.train), ("arbitrary_val.csv", self.val)):
            if [r.source_id for r in rows] != order:
                raise OfficialDataError(f"{name} is not in the order of imgnet_aug_edit.json")
        for t, v in zip(self.train, self.val):
            recs = self.edit[t.source_id]
            if (t.dest_id != recs[0].dest_id or v.dest_id != t.dest_id
                    or list(v.prompts) != [r.text for r in recs] or list(v.seeds) != [r.seed for r in recs]
                    or list(t.seeds) != [r.seed for r in recs][:len(t.seeds)]):
                raise OfficialDataError(f"edit class {t.source_id} ({t.source}) differs between the csv and json files")
            if t.dest_id not in self.holdout:
                raise OfficialDataError(f"destination {t.dest_id} of {t.source} is not a holdout class")
        for cid, recs in [*self.edit.items(), *self.holdout.items()]:
            if recs[0].class_name != self.names(cid)[0]:
                raise OfficialDataError(f"class {cid}: name {recs[0].class_name!r} is not id2label's first synonym")

    def to_bundle(self) -> SplitBundle:
        templates = self.train[0].prompts
        if any(r.prompts != templates for r in self.train):
            raise OfficialDataError("arbitrary_train.csv rows use different training templates")
        rect_prompts: dict[int, list[str]] = {}
        for r in self.rectification:
            rect_prompts.setdefault(r.source_id, list(r.prompts))
        concepts = []
        for cid in self.pool:
            recs = self.edit.get(cid) or self.holdout[cid]
            name = recs[0].class_name
            prompts = tuple(PromptSeed(r.text if cid in self.edit else slot(r.text, name), r.seed) for r in recs)
            info: dict[str, Any] = {"split": "edit" if cid in self.edit else "holdout"}
            if cid in rect_prompts:
                info["rectification_prompts"] = rect_prompts[cid]
            concepts.append(Concept(cid, name, tuple(self.names(cid)[1:]), prompts, info))
        edits = tuple(EditPair(t.source_id, t.dest_id, int(t.seed_train if t.seed_train is not None
                                                              else fallback_seed(t.source)),
                               tuple(t.seeds[:len(templates)])) for t in self.train)
        old = {(r.source, r.source_id): r for r in self.rectification_train}
        rects = []
        for r in self.rectification:
            prev = old.get((r.source, r.source_id))
            seed_train = (prev.seed_train if prev is not None and prev.seed_train is not None
                          else fallback_seed("rectification", r.source, r.source_id))
            rects.append(Rectification(r.source_id, r.source, r.dest, int(seed_train),
                                       tuple(r.seeds[:len(templates)])))
        return SplitBundle(
            name="iceb-official", world="imagenet", version=f"emcid-{EMCID_COMMIT[:7]}",
            concepts=tuple(concepts), edits=edits, holdout=tuple(self.holdout), rectifications=tuple(rects),
            templates=tuple(templates), holdout_prompts_per_class=3, rectification_max=RECTIFICATION_MAX,
            info={"source": self.source, "commit": EMCID_COMMIT, "default_edits": list(ACE_DEFAULT_EDITS),
                  "rectification_default_edits": [RECTIFICATION_MAX],
                  "seed_train_fallback": [r.source for r in self.rectification
                                          if (r.source, r.source_id) not in old]})


def load_official(data_dir: str | Path | None = None, download: bool = True, check: bool = True) -> OfficialICEB:
    """Read (downloading if needed) and cross-check the released ICEB files."""
    def f(name: str) -> Path:
        return official_file(name, data_dir, download)

    edit_path = f("imgnet_aug_edit.json")
    obj = OfficialICEB(
        edit=group_by_class(read_prompt_records(edit_path)),
        holdout=group_by_class(read_prompt_records(f("imgnet_aug_test.json"))),
        train=read_request_csv(f("arbitrary_train.csv")),
        val=read_request_csv(f("arbitrary_val.csv")),
        rectification=read_request_csv(f("rectification_val.csv")),
        rectification_train=read_request_csv(f("rectification_train.csv")),
        id2label={int(k): v for k, v in json.loads(f("vit_classifier_config.json").read_text())["id2label"].items()},
        source=str(edit_path.parent),
    )
    if check:
        obj.check()
    return obj


def official_bundle(data_dir: str | Path | None = None, download: bool = True) -> SplitBundle:
    return load_official(data_dir, download).to_bundle()


def load_class_scores(data_dir: str | Path | None = None, download: bool = True) -> dict[int, dict[str, dict]]:
    """``imgnet_prompts_cls.json``: {class id: {name: {mean, std, number}}} (ViT-B/16 on 8 SD-1.4 images)."""
    path = official_file("imgnet_prompts_cls.json", data_dir, download)
    return {int(k): v for k, v in json.loads(path.read_text()).items()}


def alias_request_count(bundle: SplitBundle, n: int) -> int:
    """Alias requests for the first ``n`` edits: every non-primary name of each edited source."""
    return sum(len(bundle.concept(e.source_id).aliases) for e in bundle.edits[:n])


__all__ = ["ACE_DEFAULT_EDITS", "ENV_VAR", "FILES", "OfficialICEB", "OfficialPrompt", "OfficialRequest",
           "load_official", "official_bundle", "load_class_scores", "official_file", "official_url",
           "fill", "slot", "fallback_seed", "alias_request_count"]
