"""The structural package has no import cycle (in-function imports included) and its types are a leaf module."""

from __future__ import annotations

import ast
from pathlib import Path

import sparsetrain

ROOT = Path(sparsetrain.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """sparsetrain modules imported anywhere in the file (`from a import b` counts a.b when that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {name for name in found if name in known}


def import_graph(package: str) -> dict[str, set[str]]:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: imports_of(path, set(files)) - {name} for name, path in files.items()
            if name.startswith(package)}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt in graph and state.get(nxt) is None and (cycle := visit(nxt, [*stack, nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if state.get(start) is None and (cycle := visit(start, [start])):
            return cycle
    return None


def test_structural_and_pruning_have_no_import_cycle():
    for package in ("sparsetrain.structural", "sparsetrain.pruning"):
        graph = import_graph(package)
        assert graph, f"no modules found for {package}"
        assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_types_is_a_leaf_module():
    """The public structural types import nothing of sparsetrain but its error classes (a leaf themselves)."""
    graph = import_graph("sparsetrain")
    assert graph["sparsetrain.structural.types"] == {"sparsetrain.errors"}
    assert graph["sparsetrain.errors"] == set()
