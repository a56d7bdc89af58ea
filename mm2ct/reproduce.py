"""``mm2ct reproduce``: execute every numbered notebook in order with papermill for one profile.

Executed copies go to ``reports/<profile>/notebooks/`` (widget state stripped: readable on the web, where a
progress-bar widget cannot render); notebooks write their artefacts (tables, figures) to
``reports/<profile>/`` (``$MM2CT_REPORTS_DIR/<profile>/`` when set).  The kernels inherit the work directory
(``--workdir`` / ``$MM2CT_WORKDIR``, made absolute: they run in the notebooks' folder).  A failing notebook stops
the run with the notebook's name, the failing cell and the error. While a notebook runs, the terminal shows its
cell and what the cell prints (notebook 06: runs done, steps and losses of the runs under way).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

from mm2ct import repo_root
from mm2ct.atomic import atomic_path
from mm2ct.workspace import WORKDIR_ENV, reports_root, using_workdir, workdir


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


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def publishable(path: Path, roots: tuple[str | os.PathLike, ...] = ()) -> None:
    """Make an executed notebook fit to publish: strip what only a live kernel can show (ipywidgets state and widget
    views; their plain-text fallback stays), so that it reads on the web as it ran, and write the folders in
    ``roots`` (default: the repository and the work directory) as relative paths and the user's home folder as
    ``~``, so that it names no folder of the machine that ran it."""
    import nbformat

    roots = tuple(str(Path(r).resolve()) for r in roots or (repo_root(), workdir()))
    home = str(Path.home().resolve())

    def scrub(text: str) -> str:
        for r in sorted(set(roots), key=len, reverse=True):
            text = text.replace(r + os.sep, "").replace(r, ".")
        if len(Path(home).parts) > 1:     # a home of "/" would turn every absolute path into "~"
            text = re.sub(re.escape(home) + r"(?![\w.-])", "~", text)    # not the home "ann" inside "anna"
        return text

    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop("widgets", None)
    pm_meta = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):
        if isinstance(pm_meta.get(key), str):
            pm_meta[key] = scrub(pm_meta[key])
    for key, value in list(pm_meta.get("parameters", {}).items()):
        if isinstance(value, str):
            pm_meta["parameters"][key] = scrub(value)
    for cell in nb.cells:
        if cell.cell_type == "code" and "injected-parameters" in cell.metadata.get("tags", []):
            cell.source = scrub(cell.source)
        for out in cell.get("outputs", []):
            if "text" in out:
                out["text"] = scrub(out["text"])
            data = out.get("data") or {}
            data.pop(WIDGET_VIEW, None)
            for mime in ("text/plain", "text/html", "text/markdown"):
                if isinstance(data.get(mime), str):
                    data[mime] = scrub(data[mime])
            if out.get("output_type") == "error":
                out["traceback"] = [scrub(t) for t in out.get("traceback", [])]
        if cell.get("outputs"):
            cell.outputs = [o for o in cell.outputs if o.get("output_type") != "display_data" or o.get("data")]
    with atomic_path(path) as tmp:
        nbformat.write(nb, str(tmp))


class _Echo(logging.Handler):
    """Shows a running notebook on the terminal: ``  06 · cell 7/12`` when papermill starts a cell, and every line
    the cell prints (its training progress included) as ``  06 | ...``; stderr lines as ``  06 ! ...``.
    Also the file-like object papermill writes the cells' stdout to."""

    def __init__(self, tag: str, n_cells: int, log, echo_output: bool):
        super().__init__(logging.INFO)
        self.tag, self.n_cells, self.log, self.echo_output = tag, n_cells, log, echo_output

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        m = re.match(r"Executing Cell (\d+)", msg)
        if m:
            self.log(f"  {self.tag} · cell {m.group(1)}/{self.n_cells}", flush=True)
        elif record.levelno >= logging.WARNING and self.echo_output and "Executing Cell" not in msg:
            for line in msg.rstrip().splitlines()[-3:]:   # a cell's stderr (warnings): its last lines
                if line.strip():
                    self.log(f"  {self.tag} ! {line[:200]}", flush=True)

    def write(self, text: str) -> int:
        if self.echo_output:
            for line in text.splitlines():
                line = line.split("\r")[-1]                # a progress bar redrawn in place: its last state
                if line.strip():
                    self.log(f"  {self.tag} | {line[:200]}", flush=True)
        return len(text)

    def flush(self) -> None:
        pass


@contextlib.contextmanager
def _echo(tag: str, n_cells: int, log, echo_output: bool):
    """Papermill's logger routed to ``_Echo`` (and not to the root logger) for one notebook."""
    logger = logging.getLogger("papermill")
    handler = _Echo(tag, n_cells, log, echo_output)
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def run_notebooks(profile: str, data_dir: str | None = None, only: list[str] | None = None,
                  notebooks_dir: Path | None = None, reports_dir: Path | None = None,
                  kernel: str = "python3", log=print, echo_output: bool = True) -> list[dict]:
    """Run the notebooks for ``profile``; return one record per notebook (name, seconds, output path).

    While a notebook runs, the terminal shows which cell it is in and (``echo_output``) what its cells print, such
    as notebook 06's training progress (runs done, steps, current losses)."""
    import papermill as pm

    root = repo_root()
    notebooks_dir = Path(notebooks_dir or root / "notebooks")
    reports_dir = Path(reports_dir or reports_root() / profile)
    executed = reports_dir / "notebooks"
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
        n_cells = len(json.loads(nb.read_text(encoding="utf-8"))["cells"]) + 1   # papermill adds its parameters
        try:
            with using_workdir(os.environ.get(WORKDIR_ENV) or None), \
                    _echo(nb.name[:2], n_cells, log, echo_output) as echo:   # the kernel inherits the work dir
                pm.execute_notebook(str(nb), str(out), parameters=params, kernel_name=kernel,
                                    cwd=str(notebooks_dir), progress_bar=False, log_output=True, stdout_file=echo)
        except pm.PapermillExecutionError as e:
            idx, first = _failing_cell(out)
            where = f"cell {idx} ({first!r})" if idx is not None else f"execution count {e.exec_count}"
            raise NotebookFailed(
                f"{nb.name} failed in {where}: {e.ename}: {e.evalue}\n  executed copy with the traceback: {out}"
            ) from None
        publishable(out)
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
    parser.add_argument("--quiet", action="store_true",
                        help="show only which notebook and cell runs, not what the cells print")


def run(args) -> int:
    t0 = time.time()
    try:
        records = run_notebooks(args.profile, args.data_dir, args.only, kernel=args.kernel,
                                echo_output=not args.quiet)
    except NotebookFailed as e:
        print(f"mm2ct reproduce: {e}", file=sys.stderr)
        return 1
    print(f"{len(records)} notebooks ran in {time.time() - t0:.0f} s; artefacts under "
          f"{Path(records[0]['executed']).parent.parent if records else reports_root() / args.profile}")
    return 0
