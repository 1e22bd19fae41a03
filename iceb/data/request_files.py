"""Edit requests from a user's own files, validated before any heavy work.

Three formats, one result (a list of :class:`~editors.base.EditRequest`):

- **CSV** with a header row. Columns: ``source``, ``destination`` (required; ``dest`` is accepted), and
  optionally ``templates`` (``prompts``), ``seed`` (``seed_train``), ``kind`` (update|erase|rectify|debias),
  ``request_id``, ``source_id``, ``destination_id``, ``destinations`` (``dests``: a debias request's
  destinations, written like ``templates``; a debias request needs no ``destination``). A ``templates`` cell is either a ``|``-separated list
  (``A photo of {}|A painting of {}``) or a JSON/Python list literal (``["A photo of {}", "{} | art"]``;
  use the literal form when a template itself contains ``|``). An empty cell means the default templates
  (``An image of {}``, ``A photo of {}``, ``{}``); an empty seed means 0.
- **JSON / JSONL / YAML**: a list of request objects, or an object with a ``requests`` list. Object keys are
  the CSV columns above.
- **EMCID's example format** (``test_examples/*.json``): ``{"requests": [{"source", "dest", "prompts",
  "seed_train"}], "val_prompts": [...], ...}``. EMCID's run settings (``hparams``, ``model_ckpt``,
  ``mom2_weight``, ...) are kept in :attr:`RequestFile.extras` and not applied; ``val_prompts`` are what
  ``iceb generate`` renders when given the file.

Validation (:func:`validate_requests`) names the file and the 1-based row (CSV: also the line): empty or
duplicate sources, a source that is another request's destination (the result would depend on the order
of a batch edit), templates without exactly one ``{}``, and prompts longer than CLIP's 77 tokens.
"""
from __future__ import annotations

import ast
import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from editors.requests import DEFAULT_TEMPLATES, EditRequest, RequestError

#: canonical field -> accepted spellings (the first is canonical)
FIELDS: dict[str, tuple[str, ...]] = {
    "source": ("source",),
    "destination": ("destination", "dest", "target"),
    "templates": ("templates", "prompts"),
    "seed": ("seed", "seed_train"),
    "kind": ("kind",),
    "request_id": ("request_id", "id"),
    "source_id": ("source_id", "source_class"),
    "destination_id": ("destination_id", "dest_id", "dest_class", "destination_class"),
    "destinations": ("destinations", "dests"),
}
_ALIASES = {alias: canon for canon, names in FIELDS.items() for alias in names}
#: per-request keys of EMCID's examples that ICEB's requests do not use (kept, with a warning)
IGNORED_REQUEST_KEYS = ("training_img_paths",)
#: top-level keys of EMCID's example files: run settings of EMCID's own script, kept as extras
EMCID_TOP_KEYS = ("hparams", "model_ckpt", "mom2_weight", "mom2_weight_2", "edit_weight", "val_prompts",
                  "out_dir", "sample_num", "other")
#: top-level keys of a user task file (read by iceb.tasks.user)
TASK_TOP_KEYS = ("name", "description", "eval", "classes", "edits", "metrics", "world")
MAX_CLIP_TOKENS = 77
#: a templates cell longer than this is refused before it is parsed
MAX_TEMPLATES_CELL = 10_000
#: a request file with more requests than this gets a warning with its size and cost before validation
LARGE_REQUEST_FILE = 10_000
_VALIDATE_SECONDS_PER_REQUEST = 4.5e-4  # measured: 200,000 requests validate in about 90 s


class RequestFileError(RequestError):
    """A malformed request file or an invalid request; the message names the file and the row."""


@dataclass
class RequestFile:
    """What a request file holds: the requests, the file's other top-level entries, and warnings."""

    requests: list[EditRequest]
    path: str = "<requests>"
    extras: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    rows: list[str] = field(default_factory=list)  # "row 3 (line 4)" per request, for messages


# --------------------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------------------
def parse_templates(value: Any, where: str) -> tuple[str, ...]:
    """A template cell: a list, a list literal, or a '|'-separated string; empty = the defaults."""
    if value is None:
        return DEFAULT_TEMPLATES
    if isinstance(value, (list, tuple)):
        items = list(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return DEFAULT_TEMPLATES
        if text.startswith("["):
            shown = text if len(text) <= 80 else text[:77] + "..."
            if len(text) > MAX_TEMPLATES_CELL:
                raise RequestFileError(f"{where}: templates cell is {len(text)} characters long (at most "
                                       f"{MAX_TEMPLATES_CELL}): {shown!r}")
            try:
                items = json.loads(text)
            except RecursionError:
                raise RequestFileError(f"{where}: templates {shown!r} is nested too deeply to be a list of "
                                       f"strings") from None
            except json.JSONDecodeError:
                try:
                    items = ast.literal_eval(text)  # literals only: safe on untrusted text
                except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as err:
                    why = "nested too deeply" if isinstance(err, (RecursionError, MemoryError)) else str(err)
                    raise RequestFileError(f"{where}: templates {shown!r} is not a valid list literal "
                                           f"({why})") from None
            if not isinstance(items, list):
                raise RequestFileError(f"{where}: templates {text!r} is not a list")
        else:
            items = [t.strip() for t in text.split("|")]
    else:
        raise RequestFileError(f"{where}: templates must be a list of strings, got {type(value).__name__}")
    bad = [t for t in items if not isinstance(t, str)]
    if bad:
        raise RequestFileError(f"{where}: every template must be a string, got {bad[0]!r}")
    if not items:
        raise RequestFileError(f"{where}: templates is an empty list")
    return tuple(items)


def _parse_seed(value: Any, where: str) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        return 0
    if isinstance(value, bool):
        raise RequestFileError(f"{where}: seed must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        raise RequestFileError(f"{where}: seed must be an integer, got {value!r}") from None


def _parse_destinations(value: Any, where: str) -> tuple[str, ...]:
    """A debias request's ``destinations`` cell, written like a templates cell (a list, a list literal or a
    '|'-separated string); empty: none."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return ()
    try:
        items = parse_templates(value, where)
    except RequestFileError as err:
        raise RequestFileError(str(err).replace("templates", "destinations")) from None
    return tuple(str(x).strip() for x in items)


def _parse_id(value: Any) -> int | str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return value.strip()
    return value


def request_from_mapping(obj: Mapping[str, Any], where: str, warnings: list[str] | None = None) -> EditRequest:
    """One request from a mapping with (aliases of) the canonical keys; unknown keys are errors."""
    if not isinstance(obj, Mapping):
        raise RequestFileError(f"{where}: a request must be an object with 'source' and 'destination', "
                               f"got {type(obj).__name__} {obj!r}")
    values: dict[str, Any] = {}
    unknown = []
    for key, value in obj.items():
        canon = _ALIASES.get(str(key).strip())
        if canon is None:
            if key in IGNORED_REQUEST_KEYS:
                if warnings is not None:
                    warnings.append(f"{where}: {key!r} is not used by ICEB's editors and was ignored")
                continue
            unknown.append(str(key))
            continue
        if canon in values:
            raise RequestFileError(f"{where}: {key!r} repeats the field {canon!r}")
        values[canon] = value
    if unknown:
        raise RequestFileError(f"{where}: unknown field(s) {', '.join(repr(u) for u in unknown)}; known fields: "
                               f"{', '.join(n for names in FIELDS.values() for n in names)}")
    source = values.get("source")
    if source is None or not str(source).strip():
        raise RequestFileError(f"{where}: empty source")
    if "destinations" in values and values.get("kind") in (None, ""):
        values["kind"] = "debias"
    if "destination" not in values and values.get("kind") not in ("erase", "debias"):
        raise RequestFileError(f"{where}: missing destination (use an empty destination with kind 'erase' "
                               f"to erase towards the unconditional prompt)")
    dest = values.get("destination")
    kind = values.get("kind") or ("update" if dest not in (None, "") else "erase")
    try:
        return EditRequest(
            source=str(source).strip(), destination=str(dest or "").strip(),
            templates=parse_templates(values.get("templates"), where), seed=_parse_seed(values.get("seed"), where),
            kind=str(kind).strip(), source_id=_parse_id(values.get("source_id")),
            destination_id=_parse_id(values.get("destination_id")),
            request_id=None if values.get("request_id") in (None, "") else str(values["request_id"]),
            destinations=_parse_destinations(values.get("destinations"), where))
    except RequestFileError:
        raise
    except RequestError as err:
        raise RequestFileError(f"{where}: {err}") from None


def _read_csv(path: Path, text: str) -> RequestFile:
    try:
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        rows = list(reader)
    except csv.Error as err:
        raise RequestFileError(f"{path}: malformed CSV: {err}") from None
    rows_with_lines = [(i + 1, r) for i, r in enumerate(rows) if any(c.strip() for c in r)]
    if not rows_with_lines:
        raise RequestFileError(f"{path}: empty CSV (expected a header row 'source,destination[,templates][,seed]')")
    _, header = rows_with_lines[0]
    header = [h.strip().lstrip("\ufeff") for h in header]
    unknown = [h for h in header if h not in _ALIASES]
    if unknown:
        raise RequestFileError(
            f"{path}: unknown column(s) {', '.join(repr(u) for u in unknown)} in the header; known columns: "
            f"{', '.join(n for names in FIELDS.values() for n in names)}")
    if "source" not in header:
        raise RequestFileError(f"{path}: the header has no 'source' column (header: {', '.join(header)})")
    out = RequestFile([], str(path))
    for n, (line, row) in enumerate(rows_with_lines[1:], start=1):
        where = f"{path} row {n} (line {line})"
        if len(row) != len(header):
            raise RequestFileError(f"{where}: {len(row)} fields but the header has {len(header)} "
                                   f"({', '.join(header)}); quote cells that hold commas")
        out.requests.append(request_from_mapping(dict(zip(header, row)), where, out.warnings))
        out.rows.append(f"row {n} (line {line})")
    return out


def _load_structured(path: Path, text: str) -> Any:
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise RequestFileError(f"{path}: malformed YAML: {' '.join(str(err).split())}") from None
        except RecursionError:
            raise RequestFileError(f"{path}: malformed YAML: nested too deeply") from None
    if suffix == ".jsonl":
        items = []
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise RequestFileError(f"{path}: line {i} is not valid JSON: {err.msg} (column {err.colno})") from None
            except RecursionError:
                raise RequestFileError(f"{path}: line {i} is nested too deeply") from None
        return items
    try:
        return json.loads(text)
    except RecursionError:
        raise RequestFileError(f"{path}: malformed JSON: nested too deeply") from None
    except json.JSONDecodeError as err:
        raise RequestFileError(f"{path}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None


def requests_from_data(data: Any, where: str = "<requests>",
                       allowed_top: Iterable[str] = EMCID_TOP_KEYS + TASK_TOP_KEYS) -> RequestFile:
    """Requests from already-parsed JSON/YAML data: a list of objects or ``{"requests": [...], ...}``."""
    extras: dict[str, Any] = {}
    if isinstance(data, Mapping):
        allowed = set(allowed_top)
        unknown = sorted(str(k) for k in data if k != "requests" and k not in allowed)
        if unknown:
            raise RequestFileError(f"{where}: unknown top-level key(s) {', '.join(repr(u) for u in unknown)}; "
                                   f"known: requests, {', '.join(sorted(allowed))}")
        if "requests" not in data:
            raise RequestFileError(f"{where}: no 'requests' list")
        extras = {k: v for k, v in data.items() if k != "requests"}
        items = data["requests"]
        emcid = [k for k in EMCID_TOP_KEYS if k in extras and k not in ("val_prompts", "other")]
    else:
        items = data
    if not isinstance(items, list):
        raise RequestFileError(f"{where}: 'requests' must be a list of request objects, got {type(items).__name__}")
    out = RequestFile([], where, extras)
    if isinstance(data, Mapping) and emcid:
        out.warnings.append(f"{where}: EMCID's run settings {', '.join(emcid)} are not applied; choose the "
                            f"hyperparameters with --hparams / --editor-args")
    for n, obj in enumerate(items, start=1):
        out.requests.append(request_from_mapping(obj, f"{where} row {n}", out.warnings))
        out.rows.append(f"row {n}")
    return out


def read_request_file(path: str | Path, *, validate: bool = True, tokenizer: Any = None,
                      allowed_top: Iterable[str] = EMCID_TOP_KEYS + TASK_TOP_KEYS) -> RequestFile:
    """Read and (by default) validate a CSV, JSON, JSONL or YAML request file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"request file {path} does not exist")
    try:
        from iceb.utils.io import read_text

        text = read_text(path)
    except OSError as err:
        raise RequestFileError(f"cannot read request file {path}: {err.strerror or err}") from None
    except ValueError as err:  # not UTF-8
        raise RequestFileError(str(err)) from None
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rf = _read_csv(path, text)
    elif suffix in (".json", ".jsonl", ".yaml", ".yml"):
        rf = requests_from_data(_load_structured(path, text), str(path), allowed_top)
    else:
        raise RequestFileError(f"{path}: unknown request file type {suffix!r}; use .csv, .json, .jsonl or .yaml")
    if len(rf.requests) > LARGE_REQUEST_FILE:
        import logging

        n = len(rf.requests)
        msg = (f"{path}: {n} requests (more than {LARGE_REQUEST_FILE}); validating them takes about "
               f"{n * _VALIDATE_SECONDS_PER_REQUEST:.0f} s and one edit of them is a long job (EMCID's statistics "
               f"and solves grow with the request count); split the file to start with fewer")
        logging.getLogger("iceb").warning("iceb: warning: %s", msg)
    if validate:
        validate_requests(rf.requests, where=str(path), rows=rf.rows, tokenizer=tokenizer)
    return rf


def read_requests(path: str | Path, *, tokenizer: Any = None) -> list[EditRequest]:
    """The validated requests of a request file (see the module docstring for the formats).

    Args:
        path: A ``.csv``, ``.json``, ``.jsonl``, ``.yaml`` or ``.yml`` request file.
        tokenizer: The CLIP tokenizer that counts prompt tokens; default: a shared CLIP ViT-L/14 tokenizer.

    Returns:
        The requests, in file order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        RequestError: The file cannot be parsed, or a request fails validation (a
            :class:`RequestFileError`; the message names the file and row).
    """
    return read_request_file(path, tokenizer=tokenizer).requests


# --------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------
def count_clip_tokens(texts: Sequence[str], tokenizer: Any = None) -> list[int]:
    """CLIP token counts including the start and end tokens (the text encoder sees at most 77)."""
    if tokenizer is None:
        tokenizer = _shared_tokenizer()
    try:  # verbose=False: too-long prompts are reported by the caller, not by a transformers warning
        ids = tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]
    except TypeError:
        ids = tokenizer(list(texts), truncation=False)["input_ids"]
    return [len(x) for x in ids]


_TOKENIZER = None


def _shared_tokenizer():
    global _TOKENIZER
    if _TOKENIZER is None:
        from iceb.data.tokenizer import load_clip_tokenizer

        _TOKENIZER = load_clip_tokenizer()
    return _TOKENIZER


def validate_requests(requests: Sequence[EditRequest], *, where: str = "requests",
                      rows: Sequence[str] | None = None, tokenizer: Any = None,
                      max_tokens: int = MAX_CLIP_TOKENS) -> None:
    """Reject requests that no editor can serve well; every message names the row."""
    rows = list(rows) if rows is not None else [f"row {i + 1}" for i in range(len(requests))]
    if not requests:
        raise RequestFileError(f"{where}: no edit requests")
    first_source: dict[str, int] = {}
    for i, r in enumerate(requests):
        if not r.source.strip():
            raise RequestFileError(f"{where} {rows[i]}: empty source")
        key = r.source.strip().casefold()
        if key in first_source:
            raise RequestFileError(f"{where} {rows[i]}: duplicate source {r.source!r} (first in "
                                   f"{rows[first_source[key]]}); give each concept one request")
        first_source[key] = i
        for t in r.templates:
            if t.count("{}") != 1:
                raise RequestFileError(f"{where} {rows[i]}: template {t!r} must hold exactly one '{{}}' slot")
    for i, r in enumerate(requests):
        d = r.destination.strip().casefold()
        if d and d in first_source:
            j = first_source[d]
            if j == i:
                raise RequestFileError(f"{where} {rows[i]}: source and destination are the same ({r.source!r})")
            raise RequestFileError(
                f"{where} {rows[j]}: source {requests[j].source!r} is the destination of {rows[i]} "
                f"({r.source!r} -> {r.destination!r}); a batch edit cannot chain concepts, split them into two "
                f"edit files and compose them")
    texts, owners = [], []
    for i, r in enumerate(requests):
        dest_prompts = [p for p in r.destination_prompts() if p]
        dest_prompts += [t.format(d) for d in r.destinations for t in r.templates]
        for p in r.source_prompts() + dest_prompts:
            texts.append(p)
            owners.append(i)
    for text, owner, n in zip(texts, owners, count_clip_tokens(texts, tokenizer)):
        if n > max_tokens:
            raise RequestFileError(f"{where} {rows[owner]}: prompt {text!r} is {n} CLIP tokens long; "
                                   f"the text encoder reads at most {max_tokens}")


def requests_to_json(requests: Sequence[EditRequest]) -> list[dict[str, Any]]:
    """Plain JSON objects in the JSON request format (``read_request_file`` reads them back)."""
    out = []
    for r in requests:
        d = {"source": r.source, "destination": r.destination, "templates": list(r.templates), "seed": r.seed,
             "kind": r.kind}
        for k in ("source_id", "destination_id", "request_id"):
            if getattr(r, k) is not None:
                d[k] = getattr(r, k)
        if r.destinations:  # only debias requests have them; others are written (and hashed) as before
            d["destinations"] = list(r.destinations)
        out.append(d)
    return out


def requests_hash(requests: Sequence[EditRequest]) -> str:
    """The identity of a request list (recorded in edit files' sidecars)."""
    from iceb.utils.hashing import stable_hash

    return stable_hash(requests_to_json(requests))
