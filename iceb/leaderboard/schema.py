"""The one result-row schema (in the manner of lm-evaluation-harness's ``result_schema.py``).

A row is one number: (editor, model, task, N, subset, metric) -> value, with what it rests on (``n``), the
run it came from (``run_id``, and its ``run_hash`` and ``smoke`` flag as fields of their own, never parsed
back out of the id) and the ICEB version, where the edit came from (``external``: made elsewhere and scored
with ``--editor file:PATH``; ``sidecar``: whether such an edit came with ICEB's metadata), and its uncertainty (``stderr``, ``ci_low``, ``ci_high``: requests as
clusters; optional, so rows written before them still read). ``results.jsonl``, ``results.csv`` and every leaderboard CSV take
their columns from here: :data:`ROW_COLUMNS` for run files, :data:`LEADERBOARD_COLUMNS` for leaderboards,
which add the run's provenance.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class ResultRow:
    """One tidy result row, as written to ``results.jsonl``."""

    editor: str
    model: str
    task: str
    world: str
    n_edits: int
    mode: str  # "batch" or "sequential-<rounds>"
    subset: str  # prompt subset ("edit", "alias", "holdout", ...) or "-" for per-edit figures
    metric: str
    value: float
    bound: float | None  # the unedited model's value, where the metric has one
    n: int  # how many samples (prompts or requests) the value rests on
    higher_is_better: bool
    smoke: bool  # from a --limit run: not comparable
    run_id: str
    run_hash: str  # the hash part of run_id: the run's configuration identity
    iceb_version: str
    # the value's uncertainty, requests as clusters (iceb.metrics.uncertainty); None where it has none, and in
    # rows written before these fields existed
    stderr: float | None = None  # cluster-robust standard error
    ci_low: float | None = None  # bootstrap 95% percentile interval (1000 resamples of requests, seed 0)
    ci_high: float | None = None
    n_groups: int | None = None  # the clusters (requests, holdout classes) the uncertainty rests on
    # where the edit came from (None in rows written before these fields existed)
    external: bool | None = None  # True: an edit made elsewhere (--editor file:PATH); False: the run's editor made it
    sidecar: bool | None = None  # external edits: whether the file came with ICEB's metadata (None otherwise)
    # how the value was made where the columns above do not say it: JSON (an attack row's pinned settings,
    # vocabulary, judge and request sample); None elsewhere
    details: str | None = None
    # which split and hyperparameters made the row (None in rows written before these fields existed)
    split: str | None = None  # "test" (the benchmark) or "dev" (a tuning trial: never a leaderboard row)
    preset: str | None = None  # the editor's shipped hparams file (its stem: "toy", "toy-untuned", ...)
    tuned: bool | None = None  # whether that preset carries an ``iceb tune`` record
    tuning_hash: str | None = None  # the hash of that record (editors.hparams.tuning_hash)
    # where only a sample of the N edited requests was scored (EvalConfig.score_requests): "k of N, ids <hash>",
    # the hash of the scored request ids; None where every request was scored
    scored_requests: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ResultRow":
        """A row from a mapping; unknown keys are ignored, missing ones are an error naming them.

        The optional fields (:data:`OPTIONAL_COLUMNS`, added later) may be missing: they read as None.

        Args:
            data: a decoded ``results.jsonl`` line (block bookkeeping keys are ignored).

        Returns:
            The row.
        """
        missing = [f for f in REQUIRED_COLUMNS if f not in data]
        if missing:
            raise ValueError(f"a result row lacks {', '.join(missing)}")
        return cls(**{f: data[f] for f in ROW_COLUMNS if f in data})


#: columns of results.jsonl / results.csv, in order
ROW_COLUMNS: list[str] = [f.name for f in dataclasses.fields(ResultRow)]
#: the fields with a default: older rows without them still read (as None)
OPTIONAL_COLUMNS: list[str] = [f.name for f in dataclasses.fields(ResultRow) if f.default is not dataclasses.MISSING]
#: the fields every row must have
REQUIRED_COLUMNS: list[str] = [f for f in ROW_COLUMNS if f not in OPTIONAL_COLUMNS]
#: the JSON types each field accepts (``bool`` is never an ``int`` or ``float`` here)
_TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,),
                                       "float | None": (int, float, type(None)), "int | None": (int, type(None)),
                                       "bool | None": (bool, type(None)), "str | None": (str, type(None))}


def check_row(data: Mapping[str, Any]) -> ResultRow:
    """A row from a decoded ``results.jsonl`` line, refusing missing fields and wrong types.

    Args:
        data: the decoded line (keys that are no field, such as the block bookkeeping, are ignored; the
            :data:`OPTIONAL_COLUMNS` may be missing and read as None).

    Returns:
        The row.

    Raises:
        ValueError: naming every missing field and every field of the wrong type (the caller adds where).
    """
    missing = [f for f in REQUIRED_COLUMNS if f not in data]
    problems = [f"lacks {', '.join(missing)}"] if missing else []
    for f in dataclasses.fields(ResultRow):
        if f.name not in data:
            continue
        v, allowed = data[f.name], _TYPES[str(f.type)]
        if not isinstance(v, allowed) or (isinstance(v, bool) and bool not in allowed):
            problems.append(f"{f.name} is {v!r} ({type(v).__name__}), expected {f.type}")
    if problems:
        raise ValueError("; ".join(problems))
    return ResultRow(**{f: data[f] for f in ROW_COLUMNS if f in data})


#: what a leaderboard adds to every row: where it came from
PROVENANCE_COLUMNS: list[str] = ["label", "git_revision", "data_hash", "hparams_hash", "versions", "erase_only"]
#: columns of the leaderboard CSVs, in order
LEADERBOARD_COLUMNS: list[str] = ROW_COLUMNS + PROVENANCE_COLUMNS
