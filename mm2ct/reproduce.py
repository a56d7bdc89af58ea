"""``mm2ct reproduce``: execute every numbered notebook in order with papermill for one profile.

Executed copies go to ``reports/<profile>/executed/``; notebooks write their artefacts (tables, figures) to
``reports/<profile>/`` (``$MM2CT_REPORTS_DIR/<profile>/`` when set).  The kernels inherit the work directory
(``--workdir`` / ``$MM2CT_WORKDIR``, made absolute: they run in the notebooks' folder).  A failing notebook stops
the run with the notebook's name, the failing cell and the error.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from mm2ct import repo_root
from mm2ct.workspace import WORKDIR_ENV, reports_root, using_workdir


class NotebookFailed(RuntimeError):
    """A notebook raised; the message names the notebook, the cell and the error."""


def notebooks(folder: Path) -> list[Path]:
    """The numbered notebooks (``NN_name.ipynb``), in order."""
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


def _failing_cell(nb_path: Path) -> tuple[int | None, str]:
    """Index and first source line of the cell papermill marked as failed in an executed notebook."""
    import nbformat

    nb = nbformat.read(nb_path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.get("cell_type") != "code":
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                first = next((ln for ln in cell.source.splitlines() if ln.strip()), "")
                return i, first
    return None, ""


def run_notebooks(profile: str, data_dir: str | None = None, only: list[str] | None = None,
                  notebooks_dir: Path | None = None, reports_dir: Path | None = None,
                  kernel: str = "python3", log=print) -> list[dict]:
    """Run the notebooks for ``profile``; return one record per notebook (name, seconds, output path)."""
    import papermill as pm

    root = repo_root()
    notebooks_dir = Path(notebooks_dir or root / "notebooks")
    reports_dir = Path(reports_dir or reports_root() / profile)
    executed = reports_dir / "executed"
    executed.mkdir(parents=True, exist_ok=True)
    todo = notebooks(notebooks_dir)
    if not todo:
        raise FileNotFoundError(f"no numbered notebooks in {notebooks_dir}")
    if only:
        todo = [p for p in todo if any(p.name.startswith(o) or p.stem == o for o in only)]
    params = {"profile": profile, "reports_dir": str(reports_dir)}
    if data_dir:
        params["data_dir"] = str(data_dir)
    records = []
    for i, nb in enumerate(todo, 1):
        out = executed / nb.name
        log(f"[{i}/{len(todo)}] {nb.name} (profile {profile}) ...", flush=True)
        t0 = time.time()
        try:
            with using_workdir(os.environ.get(WORKDIR_ENV) or None):     # the kernel inherits it, absolute
                pm.execute_notebook(str(nb), str(out), parameters=params, kernel_name=kernel,
                                    cwd=str(notebooks_dir), progress_bar=False, log_output=False)
        except pm.PapermillExecutionError as e:
            idx, first = _failing_cell(out)
            where = f"cell {idx} ({first!r})" if idx is not None else f"execution count {e.exec_count}"
            raise NotebookFailed(
                f"{nb.name} failed in {where}: {e.ename}: {e.evalue}\n  executed copy with the traceback: {out}"
            ) from None
        dt = time.time() - t0
        log(f"[{i}/{len(todo)}] {nb.name} done in {dt:.1f} s", flush=True)
        records.append({"notebook": nb.name, "seconds": round(dt, 1), "executed": str(out)})
    return records


def configure(parser) -> None:
    parser.add_argument("--profile", default="demo", help="smoke | demo | paper | path/to/profile.yaml")
    parser.add_argument("--data-dir", default=os.environ.get("MM2CT_DATA_DIR"),
                        help="dataset folder (default: $MM2CT_DATA_DIR, else the embedded phantom)")
    parser.add_argument("--only", nargs="*", help="run only these notebooks (prefixes such as 07 or names)")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name (default python3)")


def run(args) -> int:
    t0 = time.time()
    try:
        records = run_notebooks(args.profile, args.data_dir, args.only, kernel=args.kernel)
    except NotebookFailed as e:
        print(f"mm2ct reproduce: {e}", file=sys.stderr)
        return 1
    print(f"{len(records)} notebooks ran in {time.time() - t0:.0f} s; artefacts under "
          f"{Path(records[0]['executed']).parent.parent if records else reports_root() / args.profile}")
    return 0
