"""The public API: every name of ``iceb.__all__`` imports from ``iceb``, and ``import iceb`` stays torch-free."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import iceb

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", [n for n in iceb.__all__ if n != "__version__"])
def test_every_public_name_imports_from_iceb(name):
    value = getattr(iceb, name)
    assert value is not None and name in dir(iceb)
    assert callable(value)


def test_public_names_are_the_defining_modules_objects():
    from iceb.editfile import edit_model
    from iceb.harness.config import EvalConfig
    from iceb.harness.run import evaluate

    assert iceb.edit_model is edit_model and iceb.evaluate is evaluate and iceb.EvalConfig is EvalConfig


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        iceb.nope  # noqa: B018


def test_import_iceb_does_not_import_torch():
    code = ("import sys, iceb; from iceb import __all__; assert 'load_model' in __all__; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:3]")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
