"""Shared argument checks for the ``iceb`` subcommands: ``type=`` functions and a pre-flight pass.

The ``type=`` functions run while argparse parses, so a bad number, list, device or path ends in argparse's
``iceb <command>: error: argument --flag: ...`` line that names the flag, before anything heavy starts.
:func:`preflight` runs after parsing and before the command: checks that need several flags or a registry
(``--rounds`` without ``--mode sequential``, ``--preset``, ``--editor-args`` keys, ``--metrics``, ``--task``,
``--edits`` against the task, a broken ``--model`` folder), each one line naming the flag, before a model loads.

Everything here is cheap: torch is imported only for a ``--device`` other than ``auto``.
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path


class UsageError(ValueError):
    """A bad combination of command-line flags; printed as one ``iceb: error:`` line."""


def _fail(msg: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(msg)


# ----------------------------------------------------------------------------------------------------------
# numbers
# ----------------------------------------------------------------------------------------------------------
def _int(text: str) -> int:
    t = str(text).strip()
    try:
        return int(t)
    except ValueError:
        raise _fail(f"expected an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1 (``--steps``, ``--batch-size``, ``--rounds``, ``--limit``, ...)."""
    v = _int(text)
    if v < 1:
        raise _fail(f"must be a positive integer (>= 1), got {v}")
    return v


def non_negative_int(text: str) -> int:
    v = _int(text)
    if v < 0:
        raise _fail(f"must be an integer >= 0, got {v}")
    return v


def seed(text: str) -> int:
    v = _int(text)
    if not 0 <= v < 2**63:
        raise _fail(f"a seed must be in 0 <= seed < 2**63, got {v}")
    return v


def _float(text: str) -> float:
    try:
        v = float(str(text).strip())
    except ValueError:
        raise _fail(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise _fail(f"must be a finite number, got {text!r}")
    return v


def finite_float(text: str) -> float:
    return _float(text)


def finite_positive_float(text: str) -> float:
    v = _float(text)
    if v <= 0:
        raise _fail(f"must be a number > 0, got {text!r}")
    return v


def finite_non_negative_float(text: str) -> float:
    """A finite number >= 0 (``--guidance``: 0 and 1 switch classifier-free guidance off)."""
    v = _float(text)
    if v < 0:
        raise _fail(f"must be a number >= 0, got {text!r}")
    return v


def int_list(text: str) -> tuple[int, ...]:
    """``1,5,10``: positive, distinct integers; empty items (``1,,2``), zero and negatives are refused."""
    raw = str(text).split(",")
    if not str(text).strip():
        raise _fail("is empty; give comma-separated positive integers, e.g. 1,5,10")
    values: list[int] = []
    for i, item in enumerate(raw, start=1):
        item = item.strip()
        if not item:
            raise _fail(f"item {i} of {text!r} is empty; give comma-separated positive integers, e.g. 1,5,10")
        try:
            v = int(item)
        except ValueError:
            raise _fail(f"{item!r} in {text!r} is not an integer") from None
        if v < 1:
            raise _fail(f"{v} in {text!r} is not a positive integer")
        if v in values:
            raise _fail(f"{v} appears twice in {text!r}")
        values.append(v)
    return tuple(values)


def int_list_text(text: str) -> str:
    """:func:`int_list`, returned as canonical text (``"1,5,10"``) for commands that split it themselves."""
    return ",".join(str(v) for v in int_list(text))


def name_list_text(text: str) -> str:
    """``a,b``: comma-separated names, none empty, none repeated; returned as canonical text."""
    items = [x.strip() for x in str(text).split(",")]
    if not str(text).strip() or any(not x for x in items):
        raise _fail(f"{text!r} holds an empty name; give comma-separated names")
    dup = [x for i, x in enumerate(items) if x in items[:i]]
    if dup:
        raise _fail(f"{dup[0]!r} appears twice in {text!r}")
    return ",".join(items)


def class_ids_text(text: str) -> str:
    """ImageNet class ids ``0,5,9``: integers in 0..999, distinct."""
    items = [x.strip() for x in str(text).split(",")]
    seen: list[int] = []
    for x in items:
        if not x:
            raise _fail(f"{text!r} holds an empty item; give comma-separated class ids")
        try:
            v = int(x)
        except ValueError:
            raise _fail(f"{x!r} is not a class id") from None
        if not 0 <= v < 1000:
            raise _fail(f"class id {v} is not an ImageNet class (0..999)")
        if v in seen:
            raise _fail(f"class id {v} appears twice")
        seen.append(v)
    return ",".join(str(v) for v in seen)


# ----------------------------------------------------------------------------------------------------------
# device, overrides, paths
# ----------------------------------------------------------------------------------------------------------
def device(text: str) -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, and present on this machine."""
    if str(text).strip() == "auto":
        return "auto"
    from iceb.models import check_device

    try:
        return check_device(text)
    except ValueError as err:
        raise _fail(str(err)) from None


def dtype(text: str) -> str:
    t = str(text).strip()
    known = ("auto", "float32", "fp32", "float16", "fp16", "bfloat16", "bf16")
    if t not in known:
        raise _fail(f"unknown dtype {t!r}; use float32, float16 or bfloat16")
    return t


def overrides_text(text: str) -> str:
    """``key=value,key=value`` whose syntax is checked now (keys are checked against the editor later)."""
    from editors.hparams import HparamsError, parse_overrides

    try:
        parse_overrides(text)
    except HparamsError as err:
        raise _fail(str(err).removeprefix("--editor-args: ")) from None
    return text


def existing_file(text: str) -> str:
    p = Path(text).expanduser()
    if not p.exists():
        raise _fail(f"{text}: no such file")
    if p.is_dir():
        raise _fail(f"{text}: is a folder, not a file")
    return text


def existing_folder(text: str) -> str:
    p = Path(text).expanduser()
    if not p.exists():
        raise _fail(f"{text}: no such folder")
    if not p.is_dir():
        raise _fail(f"{text}: is a file, not a folder")
    return text


def json_file(text: str) -> str:
    """An existing JSON file that parses (the message names the file, line and column)."""
    existing_file(text)
    from iceb.utils.io import read_json

    try:
        read_json(text)
    except ValueError as err:
        raise _fail(str(err)) from None
    return text


def yaml_file(text: str) -> str:
    existing_file(text)
    if Path(text).suffix.lower() not in (".yaml", ".yml"):
        raise _fail(f"{text}: expected a .yaml file")
    return text


def _writable_target(p: Path, text: str) -> None:
    """``p`` can be created (or written) here: no file on its way, and the nearest existing folder writable."""
    anc = p
    while not anc.exists():
        if anc.parent == anc:
            break
        anc = anc.parent
    if anc != p and anc.exists() and not anc.is_dir():
        raise _fail(f"{text}: {anc} is a file, not a folder; pass another path")
    if anc.is_dir() and not os.access(anc, os.W_OK | os.X_OK):
        import errno

        try:
            ro = os.statvfs(anc).f_flag & os.ST_RDONLY
        except (OSError, AttributeError):
            ro = False
        if ro:
            raise _fail(f"{text}: {anc} is on a read-only file system; choose a path on a writable disk")
        raise _fail(f"{text}: permission denied writing in {anc} ({errno.errorcode.get(errno.EACCES)}); choose a "
                    f"writable folder")


def out_folder(text: str) -> str:
    """An output folder: not a file, not under a file, creatable or writable."""
    if not str(text).strip():
        raise _fail("is empty; give a folder")
    p = Path(text).expanduser()
    if p.exists() and not p.is_dir():
        raise _fail(f"{text}: is a file, not a folder; pass another folder")
    _writable_target(p, text)
    return text


def out_file(suffix: str):
    """An output file path ending in ``suffix``: not a folder, not under a file, in a writable folder."""

    def check(text: str) -> str:
        if not str(text).strip():
            raise _fail("is empty; give a file path")
        p = Path(text).expanduser()
        if p.is_dir():
            raise _fail(f"{text}: is a folder, not a file; pass a file path ending in {suffix}")
        if p.suffix != suffix:
            raise _fail(f"{text}: must end in {suffix}")
        _writable_target(p, text)
        return text

    check.__name__ = f"{suffix.strip('.')}_file"
    return check


# ----------------------------------------------------------------------------------------------------------
# pre-flight: checks across flags and against registries, before anything heavy
# ----------------------------------------------------------------------------------------------------------
TASK_FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".yaml", ".yml")


def preflight(args: argparse.Namespace) -> None:
    """Check the parsed arguments of ``iceb evaluate`` / ``iceb edit`` before the command runs."""
    command = getattr(args, "command", None)
    if command not in ("evaluate", "edit"):
        return
    mode, rounds = getattr(args, "mode", "batch"), getattr(args, "rounds", 1)
    if mode == "batch" and rounds != 1:
        raise UsageError(f"--rounds {rounds} needs --mode sequential (batch mode edits all requests at once)")
    from iceb.models import check_model_spec

    _check_editor(args)
    check_model_spec(getattr(args, "model", None))
    if command == "evaluate":
        _check_evaluate(args)


def _check_editor(args: argparse.Namespace) -> None:
    from editors import get_editor
    from editors.hparams import Hparams, parse_overrides
    from iceb.harness.external import check_options, is_external

    if is_external(args.editor):
        if args.command != "evaluate":
            raise UsageError(f"--editor {args.editor}: 'file:' scores an edit made elsewhere with 'iceb evaluate'; "
                             f"'iceb {args.command}' needs an editor (see 'iceb list editors')")
        check_options(args.editor, hparams=args.hparams, editor_args=args.editor_args, preset=args.preset,
                      mode=args.mode, cold_cost=args.cold_cost)
        return
    cls = get_editor(args.editor)
    hp_cls = getattr(cls, "hparams_class", None)
    if not (isinstance(hp_cls, type) and issubclass(hp_cls, Hparams)) or not hasattr(cls, "load_hparams"):
        return
    # The editor's own layering (shipped preset or family file, --hparams, --editor-args), each layer checked
    # with its own source, run once here before a model loads. The family of a hub id or folder is known only
    # after loading; its checks of the user's layers do not depend on it, so sd-1.4's file stands in.
    spec = getattr(args, "model", None)
    if spec is None:
        from iceb.models import default_model_spec

        spec = default_model_spec()
    from iceb.toy.worlds import is_toy_world

    family = spec if spec == "tiny" or is_toy_world(spec) else "sd-1.4"
    cls.load_hparams(family, getattr(args, "hparams", None), parse_overrides(args.editor_args),
                     preset=getattr(args, "preset", None))


def _check_evaluate(args: argparse.Namespace) -> None:
    from iceb.utils.registry import UnknownNameError, closest

    if args.metrics:
        from iceb.metrics import METRICS

        known = METRICS.names()
        for m in args.metrics.split(","):
            m = m.strip()
            if m and m not in known and ":" not in m:
                hint = closest(m, known)
                raise UnknownNameError(f"--metrics: unknown metric {m!r}." + (f" Did you mean {hint!r}?" if hint
                                                                               else "")
                                       + f" Known metrics: {', '.join(known)}.")
    task = args.task
    is_file = task and Path(task).suffix.lower() in TASK_FILE_SUFFIXES
    from iceb.tasks import TASKS

    if is_file and task not in TASKS:
        p = Path(task)
        if not p.exists():
            raise FileNotFoundError(f"--task {task}: no such task file (and no registered task of that name; "
                                    f"see 'iceb list tasks')")
        if p.is_dir():
            raise UsageError(f"--task {task}: is a folder, not a task file")
    elif ":" not in task and task not in TASKS:
        known = TASKS.names()
        hint = closest(task, known)
        raise UnknownNameError(f"--task: unknown task {task!r}." + (f" Did you mean {hint!r}?" if hint else "")
                               + f" Known tasks: {', '.join(known)}, or a task file ({', '.join(TASK_FILE_SUFFIXES)}).")
    edits = [int(x) for x in args.edits.split(",")] if args.edits else None
    if edits is None and args.mode != "sequential" and not is_file:
        return  # a registered task is built by the run; a task file is read now (cheap, and fails early)
    from iceb.models import default_model_spec, model_world
    from iceb.tasks import get_task

    world = model_world(args.model or default_model_spec()) or "imagenet"
    t = get_task(task, world=world)
    for n in edits or t.default_edits:
        t.check_n(n)
        if args.mode == "sequential" and args.rounds > n:
            raise UsageError(f"--rounds {args.rounds} exceeds the edit count {n} (each round edits at least one "
                             f"request)")


__all__ = ["UsageError", "class_ids_text", "device", "dtype", "existing_file", "existing_folder", "json_file", "finite_float",
           "finite_non_negative_float", "finite_positive_float", "int_list", "int_list_text", "name_list_text",
           "non_negative_int", "out_file", "out_folder", "overrides_text", "positive_int", "preflight", "seed",
           "yaml_file"]
