"""No import cycles among sparsetrain modules: every import statement that can run (module level and inside
functions) is an edge, so a cycle cannot hide behind an in-function import. Imports under `if TYPE_CHECKING:`
never run and are left out (they are how a module names a type of a module above it)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "sparsetrain"
# Subpackages left out of the check (none: it covers the whole package).
PENDING: tuple[str, ...] = ()


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(node: ast.ImportFrom, current: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = current.split(".")[: len(current.split(".")) - node.level + is_package]
    return ".".join(base + ([node.module] if node.module else []))


def _runnable_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except the bodies of `if TYPE_CHECKING:` blocks."""
    nodes, todo = [], [tree]
    while todo:
        node = todo.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return nodes


def _with_packages(name: str, importer: str) -> set[str]:
    """`name` and the packages Python initialises to import it (their __init__ runs first), except the root and
    the importer's own packages (already initialised when the importer runs)."""
    parts = name.split(".")
    ancestors = {".".join(parts[:i]) for i in range(2, len(parts))}
    own = {".".join(importer.split(".")[:i]) for i in range(1, len(importer.split(".")))}
    return ({name} | ancestors) - own


def imported(path: Path, modules: set[str]) -> set[str]:
    """The sparsetrain modules `path` imports anywhere in its body (`from pkg import mod` counts as pkg.mod), with
    the packages whose __init__ those imports run."""
    current, found = module_name(path), set()
    for node in _runnable_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node, current, path.name == "__init__.py")
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in modules)
    edges = set().union(*(_with_packages(name, current) for name in found)) if found else set()
    return {name for name in edges if name in modules and name != current}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imported(path, set(paths)) for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def _without(graph: dict[str, set[str]], prefixes: tuple[str, ...]) -> dict[str, set[str]]:
    keep = {n for n in graph if not any(n == p or n.startswith(f"{p}.") for p in prefixes)}
    return {n: graph[n] & keep for n in keep}


def test_the_cycle_finder_finds_a_known_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) in (["a", "b", "c", "a"],)
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_in_function_imports() -> None:
    graph = import_graph()
    assert "sparsetrain.measure" in graph["sparsetrain.pipeline"], "pipeline imports measure inside run()"
    assert "sparsetrain.pipeline" not in graph["sparsetrain.measure"], "a TYPE_CHECKING import counted as an edge"


def test_no_import_cycle_among_sparsetrain_modules() -> None:
    cycle = find_cycle(_without(import_graph(), PENDING))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
