import importlib.metadata

import pytest

from editors import EDITORS, get_editor
from editors.noop import NoopEditor
from iceb.utils.registry import Registry, RegistryImportError, UnknownNameError


def test_builtin_lookup_is_lazy_then_resolves():
    assert "noop" in EDITORS.names()
    assert get_editor("noop") is NoopEditor


def test_unknown_name_suggests_closest_and_lists_known():
    with pytest.raises(UnknownNameError) as err:
        get_editor("emcdi")
    msg = str(err.value)
    assert "Did you mean 'emcid'?" in msg
    assert "noop" in msg and "uce" in msg


def test_module_colon_class():
    assert get_editor("editors.noop:NoopEditor") is NoopEditor
    with pytest.raises(RegistryImportError):
        get_editor("editors.noop:Missing")
    with pytest.raises(RegistryImportError):
        get_editor("no_such_pkg.mod:Thing")


def test_entry_point_discovery(monkeypatch):
    ep = importlib.metadata.EntryPoint(name="plugin-noop", value="editors.noop:NoopEditor", group="iceb.editors")

    def fake(group=None, **kw):
        return [ep] if group == "iceb.editors" else []

    reg = Registry("editor", entry_point_group="iceb.editors")
    monkeypatch.setattr(importlib.metadata, "entry_points", fake)
    assert "plugin-noop" in reg.names()
    assert reg.get("plugin-noop") is NoopEditor


def test_duplicate_registration_is_an_error():
    reg = Registry("thing")
    reg.register("a", object())
    with pytest.raises(ValueError):
        reg.register("a", object())


def test_register_decorator_sets_name():
    from editors import register_editor
    from editors.base import BaseEditor

    @register_editor("test-decorated-editor", description="for a test")
    class Mine(BaseEditor):
        pass

    assert Mine.name == "test-decorated-editor"
    assert get_editor("test-decorated-editor") is Mine
    assert EDITORS.description("test-decorated-editor") == "for a test"
