"""I2P (Schramowski et al., "Safe Latent Diffusion", CVPR 2023): the inappropriate-prompts file EMCID evaluates
NSFW erasure on, ``data/i2p/unsafe-prompts4703.csv`` of EMCID's repository (4,703 prompts).

Where the file comes from (:func:`iceb.utils.download.emcid_file`), first match wins: ``path``,
``$ICEB_I2P_CSV`` (a copy of this one file), ``$ICEB_EMCID_DATA/i2p/unsafe-prompts4703.csv``, the user cache,
else a one-off download from EMCID's pinned commit, checked against :data:`I2P_SHA256`. The file is never
committed to this repository.

Columns (the released layout): ``idx, prompt, categories, hard, inappropriate_percentage, nudity_percentage,
q16_percentage, sd_safety_percentage, prompt_toxicity, lexica_url, evaluation_seed, evaluation_guidance,
sd_image_width, sd_image_height, sd_model, case_number``. :data:`REQUIRED` must be there; the others are
read when present (None otherwise). ``categories`` is a comma-separated list (``"violence, self-harm"``).
Seeds go up to 4,290,749,014 (< 2**32), inside the project's seed rule ``0 <= seed < 2**63``.

How EMCID uses it (``scripts/eval_i2p_nudity.py::generate_i2p_imgs``): one image per row, seeded with
``evaluation_seed``, guidance 7.5 for every row; the per-row ``evaluation_guidance`` (7 for 3,729 rows, up to
20 for others), ``sd_image_width``/``sd_image_height`` are read by nobody, so :mod:`iceb.tasks.nsfw` ignores
them too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from editors.requests import MAX_SEED
from iceb.utils.io import csv_reader

#: the file's path under EMCID's ``data/`` folder
I2P_RELPATH = "i2p/unsafe-prompts4703.csv"
#: its checksum at EMCID's pinned commit (:data:`iceb.utils.download.EMCID_COMMIT`)
I2P_SHA256 = "4ad69c5be4bcb0f6023cba78c73ee344cbcc99c456317958b03e68a1b3346f50"
#: a variable that may name a local copy of the file
I2P_ENV = "ICEB_I2P_CSV"
#: the number of prompts in the released file
I2P_COUNT = 4703
#: columns a file must have
REQUIRED = ("idx", "prompt", "categories", "hard", "evaluation_seed", "evaluation_guidance", "case_number")
#: columns read when present
OPTIONAL_FLOAT = ("inappropriate_percentage", "nudity_percentage", "q16_percentage", "sd_safety_percentage",
                  "prompt_toxicity")
OPTIONAL_INT = ("sd_image_width", "sd_image_height")
OPTIONAL_STR = ("lexica_url", "sd_model")


@dataclass(frozen=True)
class I2PPrompt:
    """One row of the I2P file."""

    idx: int
    prompt: str
    categories: tuple[str, ...]
    hard: bool
    evaluation_seed: int
    evaluation_guidance: float
    case_number: int
    inappropriate_percentage: float | None = None
    nudity_percentage: float | None = None
    q16_percentage: float | None = None
    sd_safety_percentage: float | None = None
    prompt_toxicity: float | None = None
    lexica_url: str | None = None
    sd_image_width: int | None = None
    sd_image_height: int | None = None
    sd_model: str | None = None


def i2p_csv_path(path: str | Path | None = None) -> Path:
    """A local copy of ``unsafe-prompts4703.csv`` (module docstring for where it is looked for).

    Raises:
        FileNotFoundError: ``path`` or ``$ICEB_I2P_CSV`` names a missing file.
        iceb.utils.download.DownloadError: The file is nowhere local and cannot be downloaded.
    """
    from iceb.utils.download import emcid_file

    return emcid_file(I2P_RELPATH, sha256=I2P_SHA256, path=path, env_var=I2P_ENV)


def _int(text: str, column: str) -> int:
    t = text.strip()
    try:
        return int(t)
    except ValueError:
        try:
            f = float(t)  # "12.0" is an integer written as a float; "1.5" is not
        except ValueError:
            raise ValueError(f"{column} {text!r} is not an integer") from None
        if not math.isfinite(f) or f != int(f):
            raise ValueError(f"{column} {text!r} is not an integer") from None
        return int(f)


def _float(text: str, column: str) -> float:
    try:
        f = float(text)
    except ValueError:
        raise ValueError(f"{column} {text!r} is not a number") from None
    if not math.isfinite(f):
        raise ValueError(f"{column} {text!r} is not finite")
    return f


def _bool(text: str, column: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "1.0", "true"):
        return True
    if t in ("0", "0.0", "false"):
        return False
    raise ValueError(f"{column} {text!r} is not 0 or 1")


def _row(row: dict[str, str | None], columns: list[str]) -> I2PPrompt:
    if None in row.values() or None in row:  # csv puts missing cells as None, extra cells under key None
        raise ValueError(f"{len([v for v in row.values() if v is not None])} cell(s) for {len(columns)} columns")
    prompt = row["prompt"] or ""
    if not prompt.strip():
        raise ValueError("the prompt is empty")
    seed = _int(row["evaluation_seed"] or "", "evaluation_seed")
    if not 0 <= seed < MAX_SEED:
        raise ValueError(f"evaluation_seed {seed} is outside 0 <= seed < 2**63")
    extra: dict[str, object] = {}
    for c in OPTIONAL_FLOAT:
        if c in row and (row[c] or "").strip():
            extra[c] = _float(row[c] or "", c)
    for c in OPTIONAL_INT:
        if c in row and (row[c] or "").strip():
            extra[c] = _int(row[c] or "", c)
    for c in OPTIONAL_STR:
        if c in row and (row[c] or "").strip():
            extra[c] = row[c]
    cats = tuple(c.strip() for c in (row["categories"] or "").split(",") if c.strip())
    return I2PPrompt(idx=_int(row["idx"] or "", "idx"), prompt=prompt, categories=cats,
                     hard=_bool(row["hard"] or "", "hard"), evaluation_seed=seed,
                     evaluation_guidance=_float(row["evaluation_guidance"] or "", "evaluation_guidance"),
                     case_number=_int(row["case_number"] or "", "case_number"), **extra)  # type: ignore[arg-type]


def load_i2p(path: str | Path | None = None, limit: int | None = None) -> list[I2PPrompt]:
    """The I2P prompts in file order (the first ``limit`` when given).

    Args:
        path: A local I2P CSV; None: :func:`i2p_csv_path` finds the released file.
        limit: Read at most this many rows.

    Returns:
        One :class:`I2PPrompt` per row.

    Raises:
        ValueError: A missing column, a row that cannot be read (too few or too many cells, an empty prompt,
            a seed or number that is not one, a seed outside ``0 <= seed < 2**63``), a repeated
            ``case_number`` or an empty file; the message names the file and, for a row, its line.
        FileNotFoundError, iceb.utils.download.DownloadError: As :func:`i2p_csv_path`.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of prompts, got {limit}")
    p = i2p_csv_path(path)
    out: list[I2PPrompt] = []
    seen: dict[int, int] = {}
    with csv_reader(p, REQUIRED, what=f" at least (EMCID's data/{I2P_RELPATH} has them)") as reader:
        columns = list(reader.fieldnames or [])
        for row in reader:
            if limit is not None and len(out) >= limit:
                break
            line = reader.line_num  # the row's last physical line (a quoted prompt may span lines)
            try:
                rec = _row(row, columns)
            except (TypeError, ValueError) as err:
                raise ValueError(f"{p}, line {line}: bad I2P row ({err})") from None
            if rec.case_number in seen:
                raise ValueError(f"{p}, line {line}: case_number {rec.case_number} repeats line {seen[rec.case_number]}")
            seen[rec.case_number] = line
            out.append(rec)
    if not out:
        raise ValueError(f"{p} holds no I2P prompts")
    return out


__all__ = ["I2P_COUNT", "I2P_ENV", "I2P_RELPATH", "I2P_SHA256", "I2PPrompt", "i2p_csv_path", "load_i2p"]
