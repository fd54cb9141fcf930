"""No import cycles: in the engine package and in the Home Assistant integration, no module
imports (at the top or inside a function) one that imports it back, however indirectly. Imports
for the type checker only (`if TYPE_CHECKING:`) do not count: they never run."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def _modules(package: str) -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of `known` that `name` (at `path`) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            test = node.test
            if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
            ):
                for statement in node.orelse:
                    self.visit(statement)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(alias.name for alias in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names = [f"{module}.{alias.name}" for alias in node.names]
            submodules = [n for n in names if n in known]
            found.update(submodules)
            if len(submodules) < len(names):  # a name defined in the module itself
                found.add(module)

    Visitor().visit(ast.parse(path.read_text()))
    return {module for module in found if module in known and module != name}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """A cycle of imports (the first module again at its end), or nothing."""
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as exc:
        return list(exc.args[1])
    return []


@pytest.mark.parametrize("package", ["edge_inspector", "custom_components/edge_inspector"])
def test_no_module_imports_one_that_imports_it_back(package: str) -> None:
    modules = _modules(package)
    known = set(modules)
    graph = {name: _imports(name, path, known) for name, path in modules.items()}
    assert sum(len(deps) for deps in graph.values()) > len(modules)  # the graph was read
    assert _cycle(graph) == []


def test_a_cycle_is_found() -> None:
    cycle = _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert sorted(cycle[:-1]) == ["a", "b", "c"] and cycle[0] == cycle[-1]
    assert _cycle({"a": {"b"}, "b": set(), "d": {"a"}}) == []
