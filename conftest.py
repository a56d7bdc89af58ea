"""The pytest session's work directory, for the unit tests and the notebooks alike.

The whole session (the tests and the notebooks nbval runs, whose kernels inherit the environment) works in a fresh
temporary folder: ``MM2CT_WORKDIR`` (runs, generated data, caches) and ``MM2CT_REPORTS_DIR`` (reports) point there,
so no test reads a stale ``runs/smoke`` of older code or writes into the repository. Set in ``pytest_configure``,
before any test is collected or any kernel starts (here, at the repository root, so that ``pytest notebooks/``
alone gets it too); removed at the end of the session.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

_SESSION_ENV = ("MM2CT_WORKDIR", "MM2CT_REPORTS_DIR")
_saved: dict[str, str | None] = {}
_folder: list[Path] = []


def pytest_configure(config) -> None:
    base = Path(tempfile.mkdtemp(prefix="mm2ct-tests-"))
    _folder.append(base)
    for name, sub in zip(_SESSION_ENV, ("work", "reports")):
        _saved[name] = os.environ.get(name)
        os.environ[name] = str(base / sub)


def pytest_unconfigure(config) -> None:
    for name, value in _saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    for base in _folder:
        shutil.rmtree(base, ignore_errors=True)
