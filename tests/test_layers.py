"""The package's layers run one way: no import cycle in mm2ct/, and nothing that evaluates, infers or reports
imports the training loop (checked on the source with ast, function-level imports included, and at run time)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import mm2ct

PACKAGE = Path(mm2ct.__file__).parent
TOOLS = PACKAGE.parent / "tools"


def _module_name(path: Path) -> str:
    parts = ("mm2ct", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph(files: dict[str, Path], known: set[str]) -> dict[str, set[str]]:
    """module -> the mm2ct modules it imports anywhere in its source (``from a.b import c`` counts a.b.c when
    that is a module, else a.b)."""
    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mm2ct"):
                edges |= {resolve(f"{node.module}.{a.name}") for a in node.names}
            elif isinstance(node, ast.Import):
                edges |= {resolve(a.name) for a in node.names if a.name.startswith("mm2ct")}
        graph[mod] = {e for e in edges if e and e != mod}
    return graph


def _package_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return _graph(files, set(files))


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_import_cycle_in_the_package() -> None:
    graph = _package_graph()
    cycles = [m for m in graph if m in _reachable(graph, m)]
    assert not cycles, f"modules on an import cycle: {sorted(cycles)}"


def test_evaluation_inference_reports_and_tools_never_reach_the_training_loop() -> None:
    graph = _package_graph()
    for mod in ("mm2ct.evaluate", "mm2ct.infer", "mm2ct.reports", "mm2ct.checkpoints", "mm2ct.predict"):
        assert mod in graph, mod
        assert "mm2ct.train" not in _reachable(graph, mod), f"{mod} imports mm2ct.train (directly or not)"
    tools = {f"tools.{p.stem}": p for p in TOOLS.glob("*.py")}
    known = set(graph) | set(tools)
    for tool, edges in _graph(tools, known).items():
        reach = set(edges).union(*(_reachable(graph, e) for e in edges))
        assert "mm2ct.train" not in reach, f"{tool} imports mm2ct.train"


def test_importing_inference_does_not_load_the_training_loop() -> None:
    code = ("import sys, mm2ct.infer, mm2ct.evaluate, mm2ct.reports, mm2ct.cli; "
            "print('mm2ct.train' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
