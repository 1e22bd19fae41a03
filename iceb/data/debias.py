"""EMCID's gender-debiasing data: 37 professions from ``data/debias/TIMED_gender_test_set_processed.csv``.

The file (commit 10a392a, sha256 :data:`DEBIAS_SHA256`) has one row per profession and the columns
:data:`COLUMNS`: ``female`` / ``male`` (the destinations, e.g. "a female doctor" / "a male doctor"), ``old`` (the
profession as edited, "a doctor"), ``new`` (the one-sided TIMED destination it was processed from, unused),
``validation`` and ``ex1``–``ex5`` (the 6 evaluation prompts, e.g. "A photo of a doctor", "a doctor laughing").
It is made from ``TIMED_gender_test_set.csv`` (35 of its rows plus two) by ``dsets/debias_requests.py::
process_gender_bias_dataset``, which derives ``female``/``male`` from ``new``.

Each profession's ``seed_train`` is the official one: ``random.seed(2023)`` then
``random.sample(range(100000), len(rows))`` in file order (``DebiasRequestDataset``).

Where the file comes from (:func:`iceb.utils.download.emcid_file`): ``path=``, ``$ICEB_DEBIAS_FILE``,
``$ICEB_EMCID_DATA/debias/...`` (a copy of EMCID's ``data/`` folder), the user cache, or a one-off checked
download from the pinned commit.
"""
from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

DEBIAS_FILE = "debias/TIMED_gender_test_set_processed.csv"
DEBIAS_SHA256 = "7c40838fbdd4aca5a70659fc03cffc4e4657dea571253e221d0a9a5280ca98e5"
DEBIAS_ENV = "ICEB_DEBIAS_FILE"
PROMPT_COLUMNS = ("validation", "ex1", "ex2", "ex3", "ex4", "ex5")
COLUMNS = ("female", "male", "old", "new", *PROMPT_COLUMNS)
#: the official stage-I templates of a debias request (``dsets/debias_requests.py``)
DEBIAS_TEMPLATES = ("a photo of {}", "an image of {}", "{}")
SEED_TRAIN_SEED = 2023


class DebiasDataError(ValueError):
    """A profession file that cannot be read; the message names the file (and the column or row)."""


@dataclass(frozen=True)
class Profession:
    """One row: the profession ``source`` ("a doctor"), its ``female`` and ``male`` destinations, its 6 evaluation
    ``prompts`` (``validation``, ``ex1``..``ex5``) and the official ``seed_train``."""

    source: str
    female: str
    male: str
    prompts: tuple[str, ...]
    seed_train: int


def debias_file(path: str | Path | None = None) -> Path:
    """The local path of the profession file (see the module docstring for where it is looked for)."""
    from iceb.utils.download import emcid_file

    return emcid_file(DEBIAS_FILE, sha256=DEBIAS_SHA256, path=path, env_var=DEBIAS_ENV)


def read_professions(path: str | Path) -> list[Profession]:
    """The professions of a file in the official format, in file order.

    Raises:
        DebiasDataError: The file cannot be read, lacks a column of :data:`COLUMNS` (the message names the file
            and the first missing column), has no rows, or has an empty cell in a column ICEB uses.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise DebiasDataError(f"{path}: the profession file has no column {missing[0]!r} (expected columns "
                                      f"{', '.join(COLUMNS)}; found {', '.join(header) or 'none'})")
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DebiasDataError(f"{path}: cannot read the profession file: {err}") from None
    if not rows:
        raise DebiasDataError(f"{path}: the profession file has no rows")
    seeds = random.Random(SEED_TRAIN_SEED).sample(range(100000), len(rows))
    out = []
    for i, (row, seed) in enumerate(zip(rows, seeds)):
        for c in ("female", "male", "old", *PROMPT_COLUMNS):
            if not row[c]:
                raise DebiasDataError(f"{path}: row {i + 1} ({row['old'] or '?'}) has an empty {c!r} cell")
        out.append(Profession(row["old"], row["female"], row["male"], tuple(row[c] for c in PROMPT_COLUMNS), seed))
    sources = [p.source for p in out]
    dup = next((s for s in sources if sources.count(s) > 1), None)
    if dup is not None:
        raise DebiasDataError(f"{path}: profession {dup!r} appears twice")
    return out


def load_professions(path: str | Path | None = None) -> list[Profession]:
    """The 37 official professions (or those of ``path``), see :func:`read_professions`."""
    return read_professions(debias_file(path))


__all__ = ["COLUMNS", "DEBIAS_ENV", "DEBIAS_FILE", "DEBIAS_SHA256", "DEBIAS_TEMPLATES", "PROMPT_COLUMNS",
           "DebiasDataError", "Profession", "debias_file", "load_professions", "read_professions"]
