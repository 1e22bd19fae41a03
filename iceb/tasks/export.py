"""A task instance as plain tables: its edit requests and its evaluation prompts, for people and other tools.

``iceb tasks show --requests/--prompts`` prints them; ``iceb tasks export`` writes them as files:

- ``esd-csv``: the prompt CSV that ESD's, UCE's and MACE's evaluation scripts read (``case_number,prompt,
  evaluation_seed`` first, then ``class``, the class the prompt names, which is what ICEB's classifier checks,
  and ICEB's own columns: ``concept`` (the request's source; empty for holdout prompts), ``subset``,
  ``dest_class``, ``group``, ``stratum``). Those scripts ignore columns they do not use, and ``iceb
  generate --prompts`` reads the file back with each prompt's seed and case number.
- ``requests-csv``: the edit requests in the CSV format of :mod:`iceb.data.request_files` (templates as a
  JSON list, so a ``|`` inside a template survives), which reads back to the same requests.

Torch-free, like the rest of :mod:`iceb.tasks`.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from iceb.tasks.base import TaskInstance

#: the columns of ``tasks show --requests``
REQUEST_COLUMNS = ("request_id", "source", "destination", "seed")
#: the columns of ``tasks show --prompts``
PROMPT_COLUMNS = ("subset", "prompt", "seed", "true_class", "dest_class", "group", "stratum")
#: the columns of an ``esd-csv`` export: ESD's three first, then what ESD tolerates and ICEB needs
ESD_COLUMNS = ("case_number", "prompt", "evaluation_seed", "class", "concept", "subset", "dest_class", "group",
               "stratum")
#: the columns of a ``requests-csv`` export (canonical names of :data:`iceb.data.request_files.FIELDS`)
REQUEST_FILE_COLUMNS = ("source", "destination", "templates", "seed", "kind", "request_id", "source_id",
                        "destination_id")
EXPORT_FORMATS = ("esd-csv", "requests-csv")


def request_rows(inst: TaskInstance) -> list[dict[str, Any]]:
    """One row per edit request (:data:`REQUEST_COLUMNS`), in request order.

    Args:
        inst: The task instance.

    Returns:
        Dicts with the request id, source, destination and seed: what a person checks first.
    """
    return [{"request_id": r.request_id or "", "source": r.source, "destination": r.destination, "seed": r.seed}
            for r in inst.requests]


def prompt_rows(inst: TaskInstance, subset: str | None = None) -> list[dict[str, Any]]:
    """One row per evaluation prompt (:data:`PROMPT_COLUMNS`), in the instance's order.

    Args:
        inst: The task instance.
        subset: Only the prompts of this subset (``edit``, ``holdout``, ...); None: all.

    Returns:
        Dicts with each prompt's subset, text, seed, classes, group and stratum (None classes as "").
    """
    return [{"subset": p.subset, "prompt": p.prompt, "seed": p.seed, "true_class": _cell(p.true_class),
             "dest_class": _cell(p.dest_class), "group": p.group, "stratum": p.stratum}
            for p in inst.prompts if subset is None or p.subset == subset]


def esd_rows(inst: TaskInstance) -> list[dict[str, Any]]:
    """The rows of an ``esd-csv`` export (:data:`ESD_COLUMNS`), ``case_number`` counting prompts from 0.

    Args:
        inst: The task instance.

    Returns:
        One dict per evaluation prompt, in the instance's order, so case ``k`` is ``inst.prompts[k]``.
    """
    source_of = {r.request_id: r.source for r in inst.requests if r.request_id}
    rows = []
    for k, p in enumerate(inst.prompts):
        request = p.group.split("/", 1)[0]
        rows.append({"case_number": k, "prompt": p.prompt, "evaluation_seed": p.seed, "class": _cell(p.true_class),
                     "concept": "" if p.subset == "holdout" else source_of.get(request, ""), "subset": p.subset,
                     "dest_class": _cell(p.dest_class), "group": p.group, "stratum": p.stratum})
    return rows


def request_file_rows(inst: TaskInstance) -> list[dict[str, Any]]:
    """The rows of a ``requests-csv`` export (:data:`REQUEST_FILE_COLUMNS`), readable by
    :func:`iceb.data.request_files.read_request_file`.

    Args:
        inst: The task instance.

    Returns:
        One dict per request; templates as a JSON list, absent ids as empty cells (read back as None); with a
        ``destinations`` JSON list too when any request is a debias request.
    """
    rows = [{"source": r.source, "destination": r.destination, "templates": json.dumps(list(r.templates)),
             "seed": r.seed, "kind": r.kind, "request_id": _cell(r.request_id), "source_id": _cell(r.source_id),
             "destination_id": _cell(r.destination_id)} for r in inst.requests]
    if any(r.destinations for r in inst.requests):  # debias requests: a column only where one has them
        for row, r in zip(rows, inst.requests):
            row["destinations"] = json.dumps(list(r.destinations)) if r.destinations else ""
    return rows


def to_csv(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """CSV text with a header row, ``\\n`` line ends, cells quoted only where needed."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def to_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Rows as aligned plain text (a header, then one line per row; the last column is not padded)."""
    cells = [list(columns)] + [[str(r[c]) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells) + "\n"


def export_text(inst: TaskInstance, fmt: str) -> str:
    """The text of an export of ``inst`` in ``fmt`` (one of :data:`EXPORT_FORMATS`).

    Raises:
        ValueError: an unknown format.
    """
    if fmt == "esd-csv":
        return to_csv(esd_rows(inst), ESD_COLUMNS)
    if fmt == "requests-csv":
        rows = request_file_rows(inst)
        return to_csv(rows, REQUEST_FILE_COLUMNS + (("destinations",) if rows and "destinations" in rows[0] else ()))
    raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")


def write_export(inst: TaskInstance, fmt: str, path: str | Path) -> Path:
    """Write an export of ``inst`` atomically (a killed export leaves no half file).

    Args:
        inst: The task instance.
        fmt: ``esd-csv`` or ``requests-csv``.
        path: The file to write.

    Returns:
        ``path``.
    """
    from iceb.utils.io import write_text

    write_text(path, export_text(inst, fmt))
    return Path(path)


def _cell(value: Any) -> Any:
    return "" if value is None else value


__all__ = ["ESD_COLUMNS", "EXPORT_FORMATS", "PROMPT_COLUMNS", "REQUEST_COLUMNS", "REQUEST_FILE_COLUMNS", "esd_rows",
           "export_text", "prompt_rows", "request_file_rows", "request_rows", "to_csv", "to_text", "write_export"]
