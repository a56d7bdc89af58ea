"""Execute notebooks under the smoke profile and keep only the outputs of `# NBVAL_CHECK_OUTPUT` cells.

    .venv/bin/python tools/nbclean.py notebooks/00_environment.ipynb [...]
    .venv/bin/python tools/nbclean.py --strip-only notebooks/*.ipynb   # drop outputs without executing

This is how notebooks are committed: nbval (`make test`) then compares those cells' outputs with a fresh run.
Like the test session, the notebooks run in a temporary work directory (MM2CT_WORKDIR, MM2CT_REPORTS_DIR), so
they start from nothing and leave nothing in the repository.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import nbformat


def clean(nb) -> None:
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        keep = cell.source.lstrip().startswith("# NBVAL_CHECK_OUTPUT")
        if not keep:
            cell.outputs = []
            cell.execution_count = None
        else:
            cell.outputs = [o for o in cell.outputs if o.get("output_type") != "display_data"]
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
    for key in ("papermill", "widgets"):  # widgets: progress-bar state, different on every run
        nb.metadata.pop(key, None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="+", type=Path)
    ap.add_argument("--strip-only", action="store_true")
    ap.add_argument("--timeout", type=int, default=600)
    args = ap.parse_args(argv)
    for path in args.notebooks:
        nb = nbformat.read(path, as_version=4)
        if not args.strip_only:
            from nbclient import NotebookClient

            with tempfile.TemporaryDirectory(prefix="mm2ct-nbclean-") as tmp:
                os.environ["MM2CT_WORKDIR"], os.environ["MM2CT_REPORTS_DIR"] = f"{tmp}/work", f"{tmp}/reports"
                NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                               resources={"metadata": {"path": str(path.parent)}}).execute()
        clean(nb)
        nbformat.write(nb, path)
        print(f"cleaned {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
