"""The notebook conventions of docs/contributing.md, checked on every committed notebook."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _code(cell) -> str:
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_conventions(path: Path) -> None:
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3", f"{path.name}: kernel must be python3"
    cells = nb["cells"]
    title = cells[0]
    assert title["cell_type"] == "markdown" and _code(title).lstrip().startswith("# "), \
        f"{path.name}: first cell must be a markdown title"
    assert all(p in _code(title) for p in ("Runtime", "smoke", "demo", "paper")), \
        f"{path.name}: the title cell must state the runtime per profile (smoke, demo, paper)"
    code_cells = [c for c in cells if c["cell_type"] == "code"]
    tagged = [i for i, c in enumerate(code_cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: exactly one code cell must be tagged 'parameters'"
    params = {}
    for node in ast.parse(_code(code_cells[tagged[0]])).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            params[node.targets[0].id] = ast.literal_eval(node.value)
    assert params.get("profile") == "smoke", f"{path.name}: the default profile must be 'smoke'"
    assert "data_dir" in params and "reports_dir" in params, f"{path.name}: parameters need data_dir, reports_dir"
    nxt = _code(code_cells[tagged[0] + 1])
    assert "resolve(profile, data_dir, reports_dir" in nxt, \
        f"{path.name}: the cell after 'parameters' must call resolve(profile, data_dir, reports_dir)"
    for i, c in enumerate(code_cells):
        check = _code(c).lstrip().startswith("# NBVAL_CHECK_OUTPUT")
        if c.get("outputs") or c.get("execution_count"):
            assert check, f"{path.name}: code cell {i} is committed with outputs but is not a # NBVAL_CHECK_OUTPUT cell"
        if check:  # nbval compares a check cell's fresh output with the committed one: there must be one
            assert c.get("execution_count") and c.get("outputs"), \
                f"{path.name}: # NBVAL_CHECK_OUTPUT cell {i} is committed unexecuted, so nbval compares nothing; " \
                f"run tools/nbclean.py {path.relative_to(path.parents[1])}"
    for i, c in enumerate(code_cells):
        src = _code(c)
        assert "class " not in src and "nn.Module" not in src, \
            f"{path.name}: code cell {i} defines model code; it belongs in the mm2ct package"


def test_notebooks_are_numbered_uniquely() -> None:
    numbers = [p.name[:2] for p in NOTEBOOKS]
    assert len(numbers) == len(set(numbers)), numbers
    assert numbers and numbers[0] == "00"
