"""`mm2ct reproduce`: notebooks run in order with papermill; a failure names the notebook and the cell."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from mm2ct.reproduce import NotebookFailed, notebooks, run_notebooks


def _notebook(path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    cells = [nbformat.v4.new_code_cell('profile = "smoke"\ndata_dir = None\nreports_dir = None',
                                       metadata={"tags": ["parameters"]})]
    cells += [nbformat.v4.new_code_cell(s) for s in sources]
    nb.cells = cells
    nbformat.write(nb, path)


def test_runs_in_order_with_parameters_and_stops_at_the_failing_cell(tmp_path, monkeypatch) -> None:
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    _notebook(nbdir / "01_first.ipynb",
              "import json, os, pathlib\npathlib.Path(reports_dir, 'seen.json').write_text(json.dumps(profile))\n"
              "pathlib.Path(reports_dir, 'workdir.txt').write_text(os.environ['MM2CT_WORKDIR'])")
    _notebook(nbdir / "02_broken.ipynb", "x = 1", "raise ValueError('phantom too small')", "y = 2")
    _notebook(nbdir / "03_never.ipynb", "raise SystemExit('must not run')")
    (nbdir / "scratch.ipynb").write_text("{}")  # not numbered: ignored
    assert [p.name for p in notebooks(nbdir)] == ["01_first.ipynb", "02_broken.ipynb", "03_never.ipynb"]

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MM2CT_WORKDIR", "work")          # relative: the kernels (cwd: the notebooks) get it absolute
    with pytest.raises(NotebookFailed) as err:
        run_notebooks("demo", notebooks_dir=nbdir, reports_dir=tmp_path / "rep", log=lambda *a, **k: None)
    assert (tmp_path / "rep" / "workdir.txt").read_text() == str(tmp_path / "work")
    msg = str(err.value)
    assert "02_broken.ipynb failed in cell" in msg and "raise ValueError" in msg and "phantom too small" in msg
    assert json.loads((tmp_path / "rep" / "seen.json").read_text()) == "demo"   # parameters injected
    assert (tmp_path / "rep" / "notebooks" / "01_first.ipynb").exists()
    assert not (tmp_path / "rep" / "notebooks" / "03_never.ipynb").exists()


def test_reports_go_where_the_workspace_puts_them(tmp_path, monkeypatch) -> None:
    """Without reports_dir: $MM2CT_REPORTS_DIR/<profile> (the tests' own folder), else the repository's reports/."""
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    _notebook(nbdir / "01_only.ipynb", "import pathlib\npathlib.Path(reports_dir, 'here.txt').write_text('x')")
    monkeypatch.setenv("MM2CT_REPORTS_DIR", str(tmp_path / "reports"))
    run_notebooks("smoke", notebooks_dir=nbdir, log=lambda *a, **k: None)
    assert (tmp_path / "reports" / "smoke" / "here.txt").is_file()


def test_no_notebooks_is_an_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no numbered notebooks"):
        run_notebooks("smoke", notebooks_dir=tmp_path, reports_dir=tmp_path / "r")


def test_the_terminal_shows_the_cell_and_what_it_prints(tmp_path) -> None:
    """A long notebook is visibly alive: each cell's start and each printed line (training progress) reach the
    log as they happen, tagged with the notebook; --quiet keeps only the cells."""
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    _notebook(nbdir / "06_train.ipynb", "print('training: 1/7 runs done')\nprint('a\\rb\\rstep 30/450')",
              "import sys\nprint('careful', file=sys.stderr)")
    lines: list[str] = []
    run_notebooks("smoke", notebooks_dir=nbdir, reports_dir=tmp_path / "r", log=lambda m, **k: lines.append(m))
    assert lines[0].startswith("[1/1] 06_train.ipynb") and lines[-1].startswith("[1/1] 06_train.ipynb done")
    body = lines[1:-1]
    assert body[:4] == ["  06 · cell 1/4", "  06 · cell 2/4", "  06 · cell 3/4", "  06 | training: 1/7 runs done"]
    assert "  06 | step 30/450" in body and "  06 ! careful" in body and "  06 · cell 4/4" in body
    quiet: list[str] = []
    run_notebooks("smoke", notebooks_dir=nbdir, reports_dir=tmp_path / "r", log=lambda m, **k: quiet.append(m),
                  echo_output=False)
    assert [ln for ln in quiet if "|" in ln or "!" in ln] == [] and "  06 · cell 4/4" in quiet


def test_executed_notebooks_read_without_a_kernel(tmp_path) -> None:
    """The committed executed notebooks carry no widget state or widget views (a web viewer cannot render them) and
    no absolute folder, but keep their text and images."""
    import nbformat

    from mm2ct.reproduce import WIDGET_VIEW, publishable

    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [nbformat.v4.new_output("display_data", data={WIDGET_VIEW: {"model_id": "1"},
                                                                 "text/plain": "100%|##| 4/4"}),
                    nbformat.v4.new_output("display_data", data={WIDGET_VIEW: {"model_id": "2"}}),
                    nbformat.v4.new_output("display_data", data={"image/png": "iVBOR"})]
    printed = nbformat.v4.new_code_cell("print(run)")
    printed.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"saved -> {tmp_path}/scratch/runs/demo\n")]
    nb.cells = [cell, printed]
    nb.metadata["papermill"] = {"input_path": str(tmp_path / "nbs" / "06.ipynb"), "parameters": {"profile": "demo"}}
    path = tmp_path / "06.ipynb"
    nbformat.write(nb, path)
    publishable(path, roots=(tmp_path,))
    out = nbformat.read(path, as_version=4)
    assert "widgets" not in out.metadata
    assert [dict(o["data"]) for o in out.cells[0].outputs] == [{"text/plain": "100%|##| 4/4"}, {"image/png": "iVBOR"}]
    assert out.cells[1].outputs[0]["text"] == "saved -> scratch/runs/demo\n"   # no folder of the machine that ran it
    assert out.metadata["papermill"]["input_path"] == "nbs/06.ipynb" and str(tmp_path) not in path.read_text()


def test_executed_notebooks_name_no_home_folder(tmp_path, monkeypatch) -> None:
    """A folder under the user's home that is neither the repository nor the work directory (the C++ scan's cache,
    printed by notebooks 00 and 02) is published as ``~/...``; a longer user name that starts alike is left alone."""
    import nbformat

    from mm2ct.reproduce import publishable

    home = tmp_path / "home" / "ann"
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: home))
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print(reason)")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout",
                                           text=f"C++ kernel loaded (cached at {home}/.cache/ext)\n"
                                                f"{home}a/data\n")]
    nb.cells = [cell]
    path = tmp_path / "nb" / "00.ipynb"
    path.parent.mkdir()
    nbformat.write(nb, path)
    publishable(path, roots=(tmp_path / "repo",))
    text = nbformat.read(path, as_version=4).cells[0].outputs[0]["text"]
    assert text == f"C++ kernel loaded (cached at ~/.cache/ext)\n{home}a/data\n"
