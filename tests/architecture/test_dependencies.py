"""The install is complete and lean: every third-party module the sources import is declared in pyproject.toml
(or in an optional extra, for imports guarded at run time), and every declared dependency is imported somewhere.

Import names are mapped to distributions with :func:`importlib.metadata.packages_distributions`, so
``PIL`` counts for ``Pillow`` and ``yaml`` for ``PyYAML``.
"""
from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
#: Declared but never imported by name: needed at run time by another dependency, with the reason.
INDIRECT = {
    "torch-fidelity": "torchmetrics' FID feature extractor (NoTrainInceptionV3) lives in torch-fidelity",
    "torchvision": "LPIPS' AlexNet backbone and timm's transforms",
    "peft": "diffusers' load_lora_weights, which reads what iceb export --format lora writes (tests load it)",
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {_norm(re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0]) for d in project["dependencies"]}
    extras = {_norm(re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0])
              for deps in project.get("optional-dependencies", {}).values() for d in deps}
    return base, extras


def _imported_top_level() -> set[str]:
    names: set[str] = set()
    for pkg in ("iceb", "editors"):
        for path in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    names.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("iceb", "editors")}


def _distributions(modules: set[str]) -> dict[str, set[str]]:
    pd = md.packages_distributions()
    return {m: {_norm(d) for d in pd.get(m, [])} for m in modules}


def test_every_declared_dependency_is_imported():
    base, _ = _declared()
    used = set().union(*_distributions(_imported_top_level()).values())
    unused = sorted(base - used - set(INDIRECT))
    assert not unused, f"declared in pyproject.toml but imported nowhere in iceb/ or editors/: {unused}"


def test_every_imported_module_is_declared():
    base, extras = _declared()
    missing = sorted(m for m, dists in _distributions(_imported_top_level()).items()
                     if dists and not dists & (base | extras))
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_datasets_is_not_a_dependency():
    base, _ = _declared()
    assert "datasets" not in base
