"""The shape of the package, checked from its source: no import circle inside
``asgictl/supervisor`` or ``asgictl/protocols``, no module over 600 lines.

Imports are read with ``ast`` (nothing is imported): every ``import`` and ``from ...
import`` that runs, at module level or inside a function, counts; those under ``if
TYPE_CHECKING:`` do not (they never run). ``from package import name`` is an import of
the submodule ``package.name`` when there is one, else of the package.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "asgictl"
#: Packages that must have no import circle among their own modules.
ACYCLIC = ("asgictl.supervisor", "asgictl.protocols")
MAX_LINES = 600
#: The option table: one definition per option, long by nature.
LONG_BY_NATURE = {"config.py"}


def modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module of the package at ``root``."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _run_time_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """``node`` and everything under it but the bodies of ``if TYPE_CHECKING:``."""
    yield node
    if isinstance(node, ast.If) and _type_checking(node.test):
        children: list[ast.AST] = list(node.orelse)
    else:
        children = list(ast.iter_child_nodes(node))
    for child in children:
        yield from _run_time_nodes(child)


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ``known`` that module ``name`` (at ``path``) imports at run time."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _run_time_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = alias.name
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target:
                    found.add(target)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in known:
                    found.add(submodule)
                elif base in known:
                    found.add(base)
    found.discard(name)
    return found


def circles(graph: dict[str, set[str]], inside: str) -> list[list[str]]:
    """The import circles among the modules of package ``inside``: each strongly
    connected set of more than one module (Tarjan's algorithm), sorted."""
    nodes = {m for m in graph if m == inside or m.startswith(inside + ".")}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph[module] & nodes):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(nodes):
        if module not in index:
            visit(module)
    return sorted(found)


def import_graph(root: Path) -> dict[str, set[str]]:
    known = modules(root)
    return {name: imports(name, path, known) for name, path in known.items()}


def describe(graph: dict[str, set[str]], group: list[str]) -> str:
    members = set(group)
    return "; ".join(f"{m} -> {', '.join(sorted(graph[m] & members))}" for m in group)


@pytest.mark.parametrize("package", ACYCLIC)
def test_no_import_circle(package: str) -> None:
    graph = import_graph(PACKAGE)
    found = circles(graph, package)
    assert not found, "import circles: " + " | ".join(describe(graph, group) for group in found)


def test_the_circle_finder_counts_function_level_imports_not_type_checking(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("")
    (root / "a.py").write_text("from pkg.sub import b\n")
    (root / "sub" / "b.py").write_text("def f():\n    from .. import c\n")
    (root / "c.py").write_text("import pkg.a\n")
    (root / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    (root / "e.py").write_text("import pkg.d\n")
    graph = import_graph(root)
    assert graph["pkg.d"] == set() and graph["pkg.e"] == {"pkg.d"}
    assert circles(graph, "pkg") == [["pkg.a", "pkg.c", "pkg.sub.b"]]
    assert circles(graph, "pkg.sub") == []


def long_modules() -> dict[str, int]:
    lengths = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        count = len(path.read_text().splitlines())
        if count > MAX_LINES and name not in LONG_BY_NATURE:
            lengths[name] = count
    return lengths


def test_no_module_over_600_lines() -> None:
    too_long = long_modules()
    assert not too_long, f"modules over {MAX_LINES} lines (split them along their seams): {too_long}"
