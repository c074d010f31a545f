"""Imports point one way (docs/design.md, "The layers").

Between packages, checked in fresh interpreters (what one test imported cannot hide a
dependency from another); within a package, read from the source, lazy imports inside
functions included (imports only for type checkers excepted), so that no two modules
import each other, however indirectly."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("module, must_not_load", [
    ("domain", "infrastructure"),
    ("domain", "sip_adapter"),
    ("infrastructure", "sip_adapter"),
    ("esc.command_error", "esc.cli"),
])
def test_importing_a_module_does_not_load_what_it_must_not_depend_on(
        python, subprocess_env, module, must_not_load):
    check = (f"import sys, {module}\n"
             f"loaded = [m for m in sys.modules if m == {must_not_load!r} "
             f"or m.startswith({must_not_load!r} + '.')]\n"
             f"assert not loaded, loaded")
    result = subprocess.run([python, "-c", check], env=subprocess_env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_within(package: str) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports (anywhere in its body)."""
    modules = {path.stem for path in (REPO / package).glob("*.py") if path.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for name in modules:
        tree = ast.parse((REPO / package / f"{name}.py").read_text())
        found: set[str] = set()

        def visit(node: ast.AST) -> None:
            if isinstance(node, ast.If) and _type_checking_only(node):
                return
            if isinstance(node, ast.ImportFrom):
                if node.level == 1 and node.module:
                    found.add(node.module.split(".")[0])
                elif node.level == 1:
                    found.update(alias.name for alias in node.names)
                elif node.level == 0 and (node.module or "").startswith(package + "."):
                    found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found.update(alias.name.split(".")[1] for alias in node.names
                             if alias.name.startswith(package + "."))
            for child in ast.iter_child_nodes(node):
                visit(child)

        visit(tree)
        graph[name] = found & modules
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, path, done = [], [], set()

    def walk(node: str) -> None:
        if node in path:
            found.append(path[path.index(node):] + [node])
            return
        if node in done:
            return
        path.append(node)
        for target in sorted(graph.get(node, ())):
            walk(target)
        path.pop()
        done.add(node)

    for node in sorted(graph):
        walk(node)
    return found


@pytest.mark.parametrize("package", ["domain", "infrastructure", "esc", "sip_adapter"])
def test_no_two_modules_of_a_package_import_each_other(package):
    assert cycles(imports_within(package)) == []


def test_the_cycles_that_were_there_are_gone():
    infrastructure, esc = imports_within("infrastructure"), imports_within("esc")
    assert "compositor" not in infrastructure["postgres"]
    assert "cli" not in esc["serve_cli"]
    assert {"command_error"} <= esc["cli"] & esc["serve_cli"]
