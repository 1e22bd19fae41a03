"""Concept editors for text-to-image diffusion models, behind one :class:`~editors.base.Editor` protocol.

Built-in editors are registered here lazily (nothing heavy is imported until one is used); third-party
editors arrive through the entry-point group ``iceb.editors`` or as ``package.module:Class``.

    from editors import get_editor
    Editor = get_editor("emcid")
    result = Editor(Editor.load_hparams("sd-1.4")).edit(pipe, requests)
"""
from __future__ import annotations

from typing import Any

from editors.requests import EditRequest, RequestError
from iceb.utils.registry import Registry

EDITORS: Registry = Registry("editor", entry_point_group="iceb.editors")

# Built-ins, imported on first use.
EDITORS.register("noop", "editors.noop:NoopEditor", description="changes nothing; the harness's control")
EDITORS.register("emcid", "editors.emcid:EMCIDEditor",
                 description="EMCID: dual self-distillation (stage I) + multi-layer closed form on text-encoder fc2 (stage II)")
EDITORS.register("emcid-ns", "editors.emcid.ns:EMCIDNSEditor",
                 description="EMCID with stage II in the null space of the preserved keys (AlphaEdit's projection)")
EDITORS.register("uce", "editors.uce:UCEEditor",
                 description="UCE: closed-form edit of every cross-attention to_k/to_v, all concepts in one solve")
EDITORS.register("time", "editors.uce:TIMEEditor",
                 description="TIME: UCE's closed form without a preserve set (lambda 0.1, all tokens)")
EDITORS.register("speed", "editors.speed:SPEEDEditor",
                 description="SPEED: null-space closed form on the cross-attention values (IPF, DPA, IEC), "
                             "all concepts in one solve per matrix")
EDITORS.register("mace", "editors.mace:MACEEditor",
                 description="MACE (no-mask): closed-form cross-attention refinement, per-concept LoRAs trained "
                             "without segmentation masks, closed-form multi-LoRA fusion")
EDITORS.register("rome", "editors.rome:ROMEEditor",
                 description="ReFACT (ROME-style): rank-one updates of one text-encoder fc2, chained request "
                             "by request inside one edit (hparam solve)")
EDITORS.register("esd-x", "editors.esd:ESDXEditor",
                 description="ESD-x: erase by negative-guidance fine-tuning of the cross-attention layers")
EDITORS.register("esd-u", "editors.esd:ESDUEditor",
                 description="ESD-u: erase by negative-guidance fine-tuning of the non-cross-attention UNet layers")


def register_editor(name: str, *, description: str = ""):
    """Class decorator: ``@register_editor("my-editor")`` sets ``cls.name`` and registers it.

    Args:
        name: The editor's name for ``--editor`` and :func:`get_editor`.
        description: A one-line description for ``iceb list editors``; also set as ``cls.description``
            when the class has none.

    Returns:
        The decorator; it returns the class unchanged apart from ``name`` (and ``description``).

    Raises:
        ValueError: ``name`` is already registered to another object (raised when the class is decorated).
    """

    def decorator(cls):
        cls.name = name
        if description and not getattr(cls, "description", ""):
            cls.description = description
        EDITORS.register(name, cls, description=description)
        return cls

    return decorator


def get_editor(name: str) -> type:
    """The editor class for a registered name, an entry point, or ``package.module:Class``.

    Args:
        name: A registered editor name (``iceb list editors``), an entry point of the group
            ``iceb.editors``, or ``package.module:Class``.

    Returns:
        The editor class (not an instance; see :func:`editors.run.make_editor`), its ``name`` set.

    Raises:
        KeyError: An unknown name (:class:`~iceb.utils.registry.UnknownNameError`, listing the known names
            and the closest match).
        ImportError: A ``package.module:Class`` or entry point that cannot be imported.
        RegistryTypeError: The name resolves to something that is not an editor class (a ``TypeError``
            and ``ValueError``).
    """
    from iceb.utils.registry import RegistryTypeError

    cls = EDITORS.get(name)
    if not (isinstance(cls, type) and callable(getattr(cls, "edit", None))):
        what = (f"the class {cls.__module__}.{cls.__qualname__}" if isinstance(cls, type)
                else f"a {type(cls).__name__}, not a class")
        raise RegistryTypeError(
            f"--editor {name}: resolves to {what}, which is not an editor. An editor is a class with "
            f"edit(pipe, requests) -> EditResult (subclass editors.base.BaseEditor, and give it an "
            f"hparams_class for its settings); see 'iceb list editors'")
    if not getattr(cls, "name", ""):
        cls.name = name
    return cls


_LAZY = {"BaseEditor": "editors.base", "EditResult": "editors.base", "Editor": "editors.base",
         "edit_in_rounds": "editors.run", "EditMode": "editors.run", "run_editor": "editors.run",
         "make_editor": "editors.run"}


def __getattr__(name: str) -> Any:
    """The torch-side names load on first use, so ``import editors.requests`` stays torch-free."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'editors' has no attribute {name!r}")


__all__ = ["EDITORS", "BaseEditor", "EditMode", "EditRequest", "EditResult", "Editor", "RequestError",
           "edit_in_rounds", "get_editor", "make_editor", "register_editor", "run_editor"]
