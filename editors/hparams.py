"""Frozen, typed hyperparameters loaded from YAML with strict validation.

Each editor declares a ``@dataclass(frozen=True)`` subclass of :class:`Hparams`. Values come from
``editors/hparams/<editor>/<base_model>.yaml`` (or any file) plus ``key=value`` overrides. Unknown keys,
wrong types and YAML 1.1's scientific-notation pitfall (PyYAML reads ``5e-1`` as the *string* "5e-1")
are errors that name the key and the file. We parse YAML with a resolver that reads ``5e-1`` as a float,
so a value that still arrives as a string for a numeric field is an error, never a silent coercion.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar, Union, get_args, get_origin

import yaml

HPARAMS_DIR = Path(__file__).with_name("hparams")

H = TypeVar("H", bound="Hparams")


class HparamsError(ValueError):
    """A bad hyperparameter file or value; the message names the key and the source."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats such as ``5e-1`` and ``1e7`` as floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; malformed YAML is an :class:`HparamsError` naming the file and line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise HparamsError(f"cannot read hyperparameter file {path}: {err}") from err
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as err:
        raise HparamsError(f"malformed YAML in {path}: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise HparamsError(f"{path}: expected a mapping of hyperparameters, got {type(data).__name__}")
    return data


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp``; only lossless conversions (int->float, list->tuple)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except HparamsError as err:
                errors.append(str(err))
        raise HparamsError(f"{where}: {value!r} does not match {_type_name(tp)}")
    if origin is Literal:
        if value not in get_args(tp):
            raise HparamsError(f"{where}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise HparamsError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise HparamsError(f"{where}: expected {len(args)} items, got {len(value)}")
            items = [_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_tp = args[0] if args else Any
            items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise HparamsError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise HparamsError(f"{where}: expected true/false, got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise HparamsError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = ""
            if isinstance(value, str) and re.fullmatch(r"[-+]?[0-9.]+[eE][-+]?[0-9]+", value.strip()):
                hint = " (write it as a YAML float, e.g. 5.0e-1, or unquoted)"
            raise HparamsError(f"{where}: expected a number, got string {value!r}{hint}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise HparamsError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise HparamsError(f"{where}: cannot check {value!r} against {_type_name(tp)}")


# --------------------------------------------------------------------------------------------------
# ranges: declared on the fields, checked for every value (NaN and infinities are always refused)
# --------------------------------------------------------------------------------------------------
def bounded(default: Any, *, min: float | None = None, max: float | None = None, exclusive_min: bool = False,
            exclusive_max: bool = False) -> Any:
    """A dataclass field whose value must lie in a range: ``lr: float = bounded(0.1, min=0, exclusive_min=True)``.

    ``None`` values (optional fields) pass; so does every element of a tuple/list field checked one by one.
    """
    meta = {"min": min, "max": max, "exclusive_min": exclusive_min, "exclusive_max": exclusive_max}
    return dataclasses.field(default=default, metadata={"range": meta})


def positive(default: Any) -> Any:
    """A field that must be > 0 (learning rates, step sizes)."""
    return bounded(default, min=0, exclusive_min=True)


def at_least(default: Any, lo: float) -> Any:
    """A field that must be >= ``lo`` (``at_least(200, 0)`` for step counts, ``at_least(100, 1)`` for sizes)."""
    return bounded(default, min=lo)


def non_negative(default: Any) -> Any:
    return bounded(default, min=0)


def _range_text(meta: Mapping[str, Any]) -> str:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and hi is not None:
        return (f"in {'(' if meta.get('exclusive_min') else '['}{lo}, {hi}{')' if meta.get('exclusive_max') else ']'}")
    if lo is not None:
        return f"{'>' if meta.get('exclusive_min') else '>='} {lo}"
    return f"{'<' if meta.get('exclusive_max') else '<='} {hi}"


def check_value(name: str, value: Any, meta: Mapping[str, Any] | None, where: str) -> None:
    """Refuse NaN/inf in any float (also inside lists) and values outside the field's declared range."""
    if isinstance(value, (list, tuple)):
        for v in value:
            check_value(name, v, meta, where)
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise HparamsError(f"{where}: {value!r} is not a finite number; give a real value")
    if not meta:
        return
    lo, hi = meta.get("min"), meta.get("max")
    bad = ((lo is not None and (value <= lo if meta.get("exclusive_min") else value < lo))
           or (hi is not None and (value >= hi if meta.get("exclusive_max") else value > hi)))
    if bad:
        raise HparamsError(f"{where}: must be {_range_text(meta)}, got {value!r}")


def check_fields(obj: Any, source: str) -> None:
    """Every field of an Hparams instance against its declared range (and finiteness)."""
    for f in dataclasses.fields(obj):
        check_value(f.name, getattr(obj, f.name), f.metadata.get("range"), f"{source}: key {f.name!r}")


def _parse_override(text: str) -> Any:
    return yaml.load(text, Loader=_Loader) if text != "" else ""  # noqa: S506


@dataclasses.dataclass(frozen=True)
class Hparams:
    """Base class of every editor's hyperparameters (frozen; validated on construction).

    Every float must be finite, and a field declared with :func:`bounded` / :func:`positive` /
    :func:`at_least` must lie in its range; both are checked on construction (before the subclass's own
    ``__post_init__``) and by :meth:`from_dict`, whose messages name the key and the source.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__post_init__")
        if own is not None and not getattr(own, "_checks_fields", False):
            def __post_init__(self, _own=own) -> None:
                check_fields(self, type(self).__name__)
                _own(self)

            __post_init__._checks_fields = True  # type: ignore[attr-defined]
            cls.__post_init__ = __post_init__  # type: ignore[method-assign]

    def __post_init__(self) -> None:
        check_fields(self, type(self).__name__)

    @classmethod
    def check_values(cls, data: Mapping[str, Any], source: str, editor: str | None = None) -> dict[str, Any]:
        """Keys, types, finiteness and ranges of (part of) a mapping of values; the checked values.

        Used for ``--editor-args`` (source ``"--editor-args"``) before any model loads.
        """
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = [k for k in data if k not in fields]
        if unknown:
            from iceb.utils.registry import closest

            whom = f"editor {editor}" if editor else cls.__name__
            key = unknown[0]
            hint = closest(str(key), list(fields))
            more = f" (and {', '.join(repr(k) for k in unknown[1:])})" if unknown[1:] else ""
            raise HparamsError(f"{source}: unknown key {key!r}{more} for {whom}"
                               + (f"; did you mean {hint!r}?" if hint else "") + f". Known keys: {', '.join(fields)}")
        values = {}
        for name, value in data.items():
            where = f"{source}: key {name!r}"
            values[name] = _coerce(value, hints[name], where)
            check_value(name, values[name], fields[name].metadata.get("range"), where)
        return values

    @classmethod
    def from_dict(cls: type[H], data: Mapping[str, Any], source: str = "<dict>") -> H:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            from iceb.utils.registry import closest

            parts = []
            for key in unknown:
                hint = closest(key, list(fields))
                parts.append(f"{key!r}" + (f" (did you mean {hint!r}?)" if hint else ""))
            raise HparamsError(
                f"{source}: unknown key(s) {', '.join(parts)} for {cls.__name__}; known keys: {', '.join(fields)}"
            )
        values = cls.check_values(data, source)
        missing = [n for n, f in fields.items() if n not in values and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise HparamsError(f"{source}: missing required key(s) {', '.join(missing)} for {cls.__name__}")
        return cls(**values)

    @classmethod
    def from_yaml(cls: type[H], path: str | Path, overrides: Mapping[str, Any] | None = None) -> H:
        data = load_yaml(path)
        data.pop("editor", None)  # a file may say which editor it is for; checked by the editor
        split_tuning(data, str(path))  # a tuned preset's record: checked, not a hyperparameter
        data.update(overrides or {})
        return cls.from_dict(data, source=str(path))

    def replace(self: H, **changes: Any) -> H:
        return type(self).from_dict({**self.to_dict(), **changes}, source="override")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def parse_overrides(text: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """``"lr=0.1,layers=[7,8]"`` -> ``{"lr": 0.1, "layers": [7, 8]}`` (values parsed as YAML); a mapping as is."""
    if not text:
        return {}
    if isinstance(text, Mapping):
        return dict(text)
    out: dict[str, Any] = {}
    depth, start = 0, 0
    pieces = []
    for i, ch in enumerate(text):
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            pieces.append(text[start:i])
            start = i + 1
    pieces.append(text[start:])
    for piece in pieces:
        if not piece.strip():
            continue
        if "=" not in piece:
            raise HparamsError(f"--editor-args: {piece.strip()!r} is not of the form key=value")
        key, _, raw = piece.partition("=")
        key = key.strip()
        if not key:
            raise HparamsError(f"--editor-args: {piece.strip()!r} has no key before '='")
        if key in out:
            raise HparamsError(f"--editor-args: key {key!r} is given twice")
        try:
            out[key] = _parse_override(raw.strip())
        except yaml.YAMLError as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise HparamsError(f"--editor-args: {piece.strip()!r} is not a valid value ({first})") from None
    if depth != 0:
        raise HparamsError(f"--editor-args: unbalanced brackets in {text!r}")
    return out


def presets(editor: str) -> list[str]:
    """The shipped hparams files of an editor (their stems: model families and named presets)."""
    folder = HPARAMS_DIR / editor
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def check_preset(editor: str, preset: str | None) -> None:
    """``--preset NAME`` must name a shipped file of the editor (never a silent fall-back to the family file)."""
    if preset is None:
        return
    known = presets(editor)
    if preset not in known:
        from iceb.utils.registry import closest

        hint = closest(preset, known) if known else None
        raise HparamsError(f"--preset: no preset {preset!r} for editor {editor}"
                           + (f"; did you mean {hint!r}?" if hint else "")
                           + f" (presets: {', '.join(known) or 'none'})")


# --------------------------------------------------------------------------------------------------
# search spaces (``iceb tune``): declared per editor on its Hparams class, beside the values they range over
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Dim:
    """One tunable hyperparameter: a float or int range (``log``: sampled on a log scale) or a choice."""

    kind: Literal["float", "int", "choice"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def describe(self) -> str:
        if self.kind == "choice":
            return f"one of {list(self.choices)}"
        return f"{self.kind} in [{self.low}, {self.high}]{' (log)' if self.log else ''}"


def float_range(low: float, high: float, log: bool = False) -> Dim:
    """A float hyperparameter searched in ``[low, high]`` (``log``: uniformly in log space)."""
    return Dim("float", float(low), float(high), log)


def int_range(low: int, high: int, log: bool = False) -> Dim:
    """An integer hyperparameter searched in ``[low, high]``."""
    return Dim("int", int(low), int(high), log)


def choice(*values: Any) -> Dim:
    """A hyperparameter that takes one of ``values``."""
    return Dim("choice", choices=tuple(values))


def check_search_space(hparams_cls: type["Hparams"], editor: str) -> dict[str, Dim]:
    """The editor's declared search space, checked against its hparams: every key a field, every range
    inside the field's own range and of its type, every choice a valid value.

    Args:
        hparams_cls: The editor's Hparams class (its ``search_space`` class attribute).
        editor: The editor's name, for the messages.

    Returns:
        The search space (key -> :class:`Dim`).

    Raises:
        HparamsError: No space declared, a key the hparams do not have, or a bad range.
    """
    space = dict(getattr(hparams_cls, "search_space", {}) or {})
    if not space:
        raise HparamsError(f"editor {editor} declares no search space (set search_space on "
                           f"{hparams_cls.__name__}); there is nothing for iceb tune to search")
    fields = {f.name for f in dataclasses.fields(hparams_cls)}
    for key, dim in space.items():
        where = f"{hparams_cls.__name__}.search_space[{key!r}]"
        if key not in fields:
            raise HparamsError(f"{where}: {hparams_cls.__name__} has no key {key!r}; known keys: {', '.join(sorted(fields))}")
        if not isinstance(dim, Dim):
            raise HparamsError(f"{where}: expected a Dim (float_range, int_range, choice), got {dim!r}")
        if dim.kind == "choice":
            if not dim.choices:
                raise HparamsError(f"{where}: a choice needs at least one value")
            for v in dim.choices:
                hparams_cls.check_values({key: v}, where, editor=editor)
        else:
            if dim.low is None or dim.high is None or not dim.low < dim.high:
                raise HparamsError(f"{where}: needs low < high, got [{dim.low}, {dim.high}]")
            if dim.log and dim.low <= 0:
                raise HparamsError(f"{where}: a log range needs low > 0, got {dim.low}")
            cast = int if dim.kind == "int" else float
            for v in (dim.low, dim.high):
                hparams_cls.check_values({key: cast(v)}, where, editor=editor)
    return space


# --------------------------------------------------------------------------------------------------
# tuning records: a tuned preset's ``tuning:`` mapping, written by ``iceb tune``, exactly these keys
# --------------------------------------------------------------------------------------------------
TUNING_KEYS = ("study", "sampler", "seed", "trials", "objective", "task", "model", "split", "edits", "search_space",
               "dev_values", "untuned_value", "best_value", "best_trial", "wall_seconds", "command", "iceb_version",
               "date")


def check_tuning_record(record: Any, source: str) -> dict[str, Any]:
    """A preset's ``tuning:`` record must hold exactly :data:`TUNING_KEYS` (a hand-edited or foreign record is
    refused, as an unknown hyperparameter is).

    Args:
        record: The value of the file's ``tuning:`` key.
        source: The file, for the message.

    Returns:
        The record.

    Raises:
        HparamsError: Not a mapping, or a missing or unknown key.
    """
    if not isinstance(record, Mapping):
        raise HparamsError(f"{source}: 'tuning' must be a mapping (the record iceb tune writes), got "
                           f"{type(record).__name__}")
    unknown = [k for k in record if k not in TUNING_KEYS]
    missing = [k for k in TUNING_KEYS if k not in record]
    if unknown or missing:
        raise HparamsError(f"{source}: the tuning record " + "; ".join(
            x for x in (f"has unknown key(s) {', '.join(map(repr, unknown))}" if unknown else "",
                        f"lacks {', '.join(map(repr, missing))}" if missing else "") if x)
            + f" (a record holds exactly: {', '.join(TUNING_KEYS)})")
    return dict(record)


def tuning_hash(record: Mapping[str, Any]) -> str:
    """A short, stable hash of a tuning record (what the result rows cite): the project's one key function."""
    from iceb.utils.hashing import stable_hash

    return stable_hash("tuning-record", dict(record))


def split_tuning(data: dict[str, Any], source: str) -> dict[str, Any] | None:
    """Remove and check a mapping's ``tuning:`` record (None when it has none); the rest are hyperparameters."""
    if "tuning" not in data:
        return None
    return check_tuning_record(data.pop("tuning"), source)
