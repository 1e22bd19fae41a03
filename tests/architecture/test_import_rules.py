"""The dependency rules of ``design.md`` ("Which part may know which"), checked on the source by an ``ast`` walk.

Every ``import`` counts, at module level or inside a function: a lazy import is still a dependency. The
rules are data (:data:`RULES`), so a new part states its place here; :func:`violations` is also run on a
deliberately broken tree to show that the check can fail.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: (importer prefix, forbidden prefix, allowed exceptions, why). Prefixes match whole dotted components.
RULES: list[tuple[str, str, tuple[str, ...], str]] = [
    ("editors", "iceb", ("iceb.utils",), "editors know models and tensors, never the benchmark (only iceb.utils)"),
    ("iceb.utils", "iceb", ("iceb.utils",), "infrastructure knows nothing of the benchmark"),
    ("iceb.utils", "editors", (), "infrastructure knows nothing of editors"),
    ("iceb.tasks", "editors", ("editors.requests",), "tasks know only the request side of the protocol"),
    ("iceb.data", "editors", ("editors.requests",), "data knows only the request side of the protocol"),
    ("iceb.metrics", "editors", (), "metrics take images and records, not editors"),
    ("iceb.metrics", "iceb.harness", (), "metrics know nothing of the run"),
    ("iceb.metrics", "iceb.models", (), "metrics take images and records, not pipelines"),
    ("iceb.generation", "editors", (), "generation knows nothing of editors"),
    ("iceb.models", "editors", (), "model loading knows nothing of editors"),
    ("iceb.leaderboard", "editors", (), "tables and plots read rows, not editors"),
    ("iceb.leaderboard", "iceb.harness", (), "tables and plots read rows, not the run"),
    ("iceb.toy", "editors", ("editors.requests",), "the toy world is data and a model, not an editor"),
    ("iceb.tasks", "iceb.harness", (), "tasks know nothing of the run"),
    ("iceb.tasks", "iceb.metrics", (), "tasks know nothing of metrics"),
    ("iceb.attacks", "editors", (), "attacks search prompts on a pipeline; they know no editor"),
    ("iceb.attacks", "iceb.harness", (), "attacks know nothing of the run"),
    ("iceb.leaderboard", "iceb.attacks", (), "tables and plots read rows, not attacks"),
]
#: Nothing but the CLI itself imports the CLI: it is a thin face over functions.
CLI = ("iceb.cli", "iceb.commands", "iceb.__main__")


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the project modules it imports (``iceb.*`` and ``editors.*``), from the source files."""
    graph: dict[str, set[str]] = {}
    for pkg in ("iceb", "editors"):
        for path in sorted((root / pkg).rglob("*.py")):
            name = _module_name(path, root)
            is_pkg = path.name == "__init__.py"
            targets: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    targets.update(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom):
                    if node.level:  # relative import: resolve against this module's package
                        base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                        mod = ".".join(base + ([node.module] if node.module else []))
                    else:
                        mod = node.module or ""
                    targets.add(mod)
                    # "from pkg import sub" imports pkg.sub when sub is a module of the project
                    for a in node.names:
                        sub = f"{mod}.{a.name}"
                        if (root / Path(*sub.split("."))).with_suffix(".py").is_file() or (
                                root / Path(*sub.split(".")) / "__init__.py").is_file():
                            targets.add(sub)
            graph[name] = {t for t in targets if t.split(".")[0] in ("iceb", "editors") and t != name}
    return graph


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that breaks a rule, as 'importer -> imported: why'."""
    out = []
    for mod, targets in sorted(graph.items()):
        for t in sorted(targets):
            for importer, forbidden, allowed, why in RULES:
                if _under(mod, importer) and _under(t, forbidden) and not any(_under(t, a) for a in allowed):
                    out.append(f"{mod} -> {t}: {why}")
            if any(_under(t, c) for c in CLI) and not any(_under(mod, c) for c in CLI):
                out.append(f"{mod} -> {t}: only the CLI imports the CLI")
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles between modules. Edges into a package's ``__init__`` from its own submodules are left
    out (a submodule registering itself with its package's registry is not a design cycle)."""

    def edges(m: str) -> list[str]:
        return [t for t in graph.get(m, ()) if t in graph and not _under(m, t)]

    found, state, stack = [], {}, []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in edges(m):
            if state.get(t) == 1:
                found.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def test_dependency_rules_hold():
    bad = violations(import_graph())
    assert not bad, "dependency rules of design.md broken:\n" + "\n".join(bad)


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_tasks_and_requests_import_without_torch():
    """The benchmark side imports the protocol's request module without pulling in torch."""
    import subprocess
    import sys

    code = ("import sys, editors.requests, iceb.tasks, iceb.data.request_files; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:3]")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize("importer,imported", [
    ("editors/uce.py", "iceb.tasks.ace"),
    ("iceb/metrics/panel.py", "editors.weights"),
    ("iceb/tasks/ace.py", "editors.base"),
    ("iceb/data/prompts.py", "iceb.cli"),
])
def test_the_check_fails_on_a_deliberate_violation(tmp_path, importer, imported):
    """Copy the sources, add one forbidden import, and the check names it."""
    import shutil

    for pkg in ("iceb", "editors"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    path = tmp_path / importer
    path.write_text(path.read_text() + f"\n\ndef _violation():\n    import {imported}  # noqa: F401\n")
    bad = violations(import_graph(tmp_path))
    mod = _module_name(path, tmp_path)
    assert any(b.startswith(f"{mod} -> {imported}:") for b in bad), bad


def test_the_cycle_check_finds_a_cycle(tmp_path):
    import shutil

    for pkg in ("iceb", "editors"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for a, b in (("iceb/leaderboard/plots.py", "iceb.leaderboard.report"),
                 ("iceb/leaderboard/report.py", "iceb.leaderboard.plots")):
        p = tmp_path / a
        p.write_text(p.read_text() + f"\n\ndef _cycle():\n    import {b}  # noqa: F401\n")
    found = cycles(import_graph(tmp_path))
    assert any("iceb.leaderboard.plots" in c and "iceb.leaderboard.report" in c for c in found), found
