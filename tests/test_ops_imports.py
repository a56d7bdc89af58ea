"""The import graph of ``mm2ct.ops``: no cycle, and no sibling imported inside a function (read with ``ast``).

Shared helpers live in ``scan_common``; backends import it at top level, the dispatcher imports the backends, and no
backend imports the dispatcher. Optional third-party imports (mamba-ssm, causal-conv1d, the C++ build) are not
siblings and may stay lazy.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mm2ct.ops

PACKAGE = "mm2ct.ops"
OPS_DIR = Path(mm2ct.ops.__file__).parent


def sibling_imports(tree: ast.Module, siblings: set[str]) -> list[tuple[str, int, bool]]:
    """(sibling module, line, inside a function) for every import of the package or one of its modules.

    ``from mm2ct.ops import name`` reads ``name`` from the package's ``__init__`` unless it is a module file.
    """
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name == PACKAGE:
                        found.append(("__init__", child.lineno, in_function))
                    elif alias.name.startswith(PACKAGE + "."):
                        found.append((alias.name[len(PACKAGE) + 1:].split(".")[0], child.lineno, in_function))
            elif isinstance(child, ast.ImportFrom):
                module = child.module or ""
                if child.level:  # relative to mm2ct/ops
                    module = PACKAGE + ("." + module if module else "") if child.level == 1 else ""
                if module == PACKAGE:
                    for alias in child.names:
                        target = alias.name if alias.name in siblings else "__init__"
                        found.append((target, child.lineno, in_function))
                elif module.startswith(PACKAGE + "."):
                    found.append((module[len(PACKAGE) + 1:].split(".")[0], child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


def import_graph(sources: dict[str, str]) -> tuple[dict[str, set[str]], list[str]]:
    """Module -> the siblings it imports, and the function-level sibling imports as "module:line -> target"."""
    siblings = set(sources) - {"__init__"}
    graph: dict[str, set[str]] = {name: set() for name in sources}
    lazy: list[str] = []
    for name, text in sources.items():
        for target, line, in_function in sibling_imports(ast.parse(text), siblings):
            if target != name:
                graph[name].add(target)
            if in_function:
                lazy.append(f"{name}:{line} -> {target}")
    return graph, lazy


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


@pytest.fixture(scope="module")
def ops_graph():
    return import_graph({p.stem: p.read_text() for p in sorted(OPS_DIR.glob("*.py"))})


def test_ops_import_graph_has_no_cycle(ops_graph):
    graph, _ = ops_graph
    assert find_cycle(graph) is None, f"import cycle in mm2ct/ops: {' -> '.join(find_cycle(graph))}"


def test_no_function_level_imports_between_ops_modules(ops_graph):
    _, lazy = ops_graph
    assert lazy == [], f"sibling imports inside functions: {lazy}"


def test_layering(ops_graph):
    """Shared helpers and the optional-kernel imports import no sibling; backends never import the dispatcher."""
    graph, _ = ops_graph
    assert graph["scan_common"] == set() and graph["cuda_kernels"] == set()
    assert {"torch_scan", "cpu_kernel", "scan_common"} <= graph["selective_scan"]
    for backend in ("torch_scan", "cpu_kernel"):
        assert "selective_scan" not in graph[backend] and "__init__" not in graph[backend]


def test_the_checker_sees_cycles_and_lazy_imports():
    """The analysis itself: a cycle through ``from mm2ct.ops import ...`` and a function-level import are caught."""
    graph, lazy = import_graph({
        "__init__": "from mm2ct.ops.a import f\n",
        "a": "from mm2ct.ops.common import g\ndef f():\n    from . import b\n    return b\n",
        "b": "from mm2ct.ops import f\n",
        "common": "import torch\n",
    })
    assert graph == {"__init__": {"a"}, "a": {"common", "b"}, "b": {"__init__"}, "common": set()}
    assert lazy == ["a:3 -> b"]
    assert find_cycle(graph) == ["__init__", "a", "b", "__init__"]
    assert find_cycle({"x": {"y"}, "y": set()}) is None
