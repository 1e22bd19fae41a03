"""One registry shape for editors, tasks and metrics.

Entries are either objects registered by a decorator, or lazy placeholders (``"package.module:Name"``
strings and ``importlib.metadata`` entry points) imported only on first ``get``, so that ``iceb --help``
and ``iceb list`` never import torch-heavy modules. Unknown names fail with the known names and the
closest match, as lm-evaluation-harness does.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """An unknown registry name; the message lists the known names and the closest match."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0])


class RegistryImportError(ImportError):
    """A lazy entry could not be imported."""


class RegistryTypeError(TypeError, ValueError):
    """A name resolves to an object of the wrong kind (e.g. ``json:JSONDecoder`` as an editor); a user error."""


@dataclass(frozen=True)
class _Lazy:
    target: str  # "package.module:Attr"
    description: str = ""

    def load(self) -> Any:
        return import_object(self.target)


def import_object(target: str) -> Any:
    """Import ``"package.module:Attr"`` (or ``package.module.Attr``) and return the attribute."""
    if ":" in target:
        module_name, _, attr = target.partition(":")
    else:
        module_name, _, attr = target.rpartition(".")
    if not module_name or not attr:
        raise RegistryImportError(f"{target!r} is not of the form 'package.module:Name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise RegistryImportError(f"cannot import module {module_name!r} for {target!r}: {err}") from err
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as err:
            raise RegistryImportError(f"module {module_name!r} has no attribute {attr!r}") from err
    return obj


def source_tree_entry_points(group: str, pyproject: Path | None = None) -> dict[str, str]:
    """The entry points of ``group`` declared in the ``pyproject.toml`` of the source tree this module was
    imported from (none for an installed wheel).

    Installed metadata is written at ``pip install`` time, so a checkout on ``sys.path`` (a worktree, an
    editable install older than its ``pyproject.toml``) would otherwise miss entry points its own tree
    declares; their ``module:attr`` targets resolve against ``sys.path`` like any other.
    """
    path = pyproject or Path(__file__).resolve().parents[2] / "pyproject.toml"
    if not path.is_file():
        return {}
    try:
        import tomllib
    except ImportError:  # Python 3.10: installed metadata only
        return {}
    try:
        declared = tomllib.loads(path.read_text()).get("project", {}).get("entry-points", {}).get(group, {})
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in declared.items()} if isinstance(declared, dict) else {}


def closest(name: str, known: list[str]) -> str | None:
    """The closest known name, by difflib ratio, or None when nothing is reasonably close."""
    lowered = {k.lower(): k for k in known}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.5)
    return lowered[hits[0]] if hits else None


class Registry(Generic[T]):
    """A thread-safe name -> object registry with lazy entries and entry-point discovery."""

    def __init__(self, kind: str, entry_point_group: str | None = None, base_cls: type | None = None,
                 plural: str | None = None):
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self.entry_point_group = entry_point_group
        self.base_cls = base_cls
        self._items: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._entry_points_loaded = False

    # -- registration -------------------------------------------------------------------------
    def register(self, name: str, obj: Any = None, *, description: str = "", overwrite: bool = False):
        """Register ``obj`` under ``name``; without ``obj`` return a decorator.

        ``obj`` may be a ``"module:Attr"`` string, registered lazily.

        Args:
            name: The name users give (``--editor``, ``--task``, ``--metric``).
            obj: The object, or a ``"package.module:Attr"`` string imported on first :meth:`get`; None:
                return a decorator that registers its target.
            description: A one-line description for ``iceb list`` (shown without importing a lazy entry).
            overwrite: Replace an existing entry of that name.

        Returns:
            ``obj`` as given, or, without ``obj``, a decorator that returns its target unchanged.

        Raises:
            ValueError: ``name`` is already registered to another object and ``overwrite`` is false.
        """
        if obj is None:
            def decorator(target: Any) -> Any:
                self.register(name, target, description=description, overwrite=overwrite)
                return target
            return decorator
        with self._lock:
            existing = self._items.get(name)
            if existing is not None and not overwrite:
                # Re-registering the object that the lazy placeholder pointed at is the normal path.
                if isinstance(existing, _Lazy) and not isinstance(obj, (str, _Lazy)):
                    self._items[name] = obj
                    return obj
                if existing is obj:
                    return obj
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = _Lazy(obj, description) if isinstance(obj, str) else obj
        return obj

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded or not self.entry_point_group:
            return
        with self._lock:
            if self._entry_points_loaded:
                return
            for ep in importlib.metadata.entry_points(group=self.entry_point_group):
                if ep.name not in self._items:
                    self._items[ep.name] = _Lazy(ep.value, f"(plug-in from {ep.dist.name if ep.dist else '?'})")
            for name, value in source_tree_entry_points(self.entry_point_group).items():
                if name not in self._items:
                    self._items[name] = _Lazy(value, "(declared in this source tree's pyproject.toml)")
            self._entry_points_loaded = True

    # -- lookup ---------------------------------------------------------------------------------
    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> T:
        """The object registered as ``name``, or, for ``package.module:Class``, that class.

        Args:
            name: A registered name, an entry point of the registry's group, or ``package.module:Class``.

        Returns:
            The object (a lazy entry is imported now and kept).

        Raises:
            UnknownNameError: An unknown name (a ``KeyError``); the message lists the known names and the
                closest match.
            RegistryImportError: A lazy entry or ``package.module:Class`` that cannot be imported.
            RegistryTypeError: The object is not a subclass of the registry's ``base_cls``.
        """
        self._load_entry_points()
        with self._lock:
            item = self._items.get(name)
        if item is None:
            if ":" in name:
                obj = import_object(name)
                self._check(name, obj)
                return obj
            known = self.names()
            hint = closest(name, known)
            msg = f"unknown {self.kind} {name!r}."
            if hint:
                msg += f" Did you mean {hint!r}?"
            msg += f" Known {self.plural}: {', '.join(known) or 'none'}."
            if self.entry_point_group:
                msg += (f" A third-party {self.kind} can be given as 'package.module:Class' or registered"
                        f" through the entry-point group {self.entry_point_group!r}.")
            raise UnknownNameError(msg)
        if isinstance(item, _Lazy):
            obj = item.load()
            with self._lock:
                # Importing the module usually registers the real object through the decorator.
                current = self._items.get(name)
                self._items[name] = current if not isinstance(current, _Lazy) else obj
            item = self._items[name]
        self._check(name, item)
        return item

    def _check(self, name: str, obj: Any) -> None:
        if self.base_cls is not None and isinstance(obj, type) and not issubclass(obj, self.base_cls):
            raise RegistryTypeError(f"{self.kind} {name!r} resolves to {obj!r}, not a subclass of "
                                    f"{self.base_cls.__name__}")

    def description(self, name: str) -> str:
        """One-line description without importing lazy entries."""
        self._load_entry_points()
        item = self._items.get(name)
        if isinstance(item, _Lazy):
            return item.description
        doc = getattr(item, "description", None) or (getattr(item, "__doc__", None) or "")
        return doc.strip().splitlines()[0] if doc.strip() else ""


def describe_all(registry: Registry[Any]) -> list[tuple[str, str]]:
    """(name, description) pairs for ``iceb list``."""
    return [(n, registry.description(n)) for n in registry.names()]

