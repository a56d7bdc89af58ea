"""Where a profile's files live: the one place notebooks, the CLI and training agree on paths.

Runs, generated data and caches live in the *work directory*: the repository root unless ``$MM2CT_WORKDIR`` (or
``mm2ct <command> --workdir DIR``, or ``resolve(root=...)``) names another folder:

    <workdir>/data/generated/<profile>/phantom/   the embedded phantom volumes (when no data folder is given)
    <workdir>/data/cache/<profile>/               the slice cache built by `mm2ct prepare`
    <workdir>/runs/<profile>/<model>/             checkpoints, logs, resolved configs

Reports are the committed artefacts of `make reproduce`; they stay in the repository wherever the work happens,
unless ``$MM2CT_REPORTS_DIR`` (or a notebook's ``reports_dir``) says otherwise:

    reports/<profile>/                            tables and figures; executed notebooks in reports/<profile>/notebooks/
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mm2ct import repo_root
from mm2ct.config import Config, load_profile

WORKDIR_ENV = "MM2CT_WORKDIR"        # runs/, data/generated/, data/cache/ go here (default: the repository root)
REPORTS_ENV = "MM2CT_REPORTS_DIR"    # reports/<profile>/ go here (default: the repository's reports/)


def workdir(root: str | os.PathLike | None = None) -> Path:
    """The work directory: ``root`` when given, else ``$MM2CT_WORKDIR``, else the repository root (absolute)."""
    chosen = root if root is not None else (os.environ.get(WORKDIR_ENV) or None)
    return Path(chosen).expanduser().absolute() if chosen is not None else repo_root()


def reports_root() -> Path:
    """The folder that holds ``<profile>/`` report folders: ``$MM2CT_REPORTS_DIR``, else the repository's reports/."""
    chosen = os.environ.get(REPORTS_ENV) or None
    return Path(chosen).expanduser().absolute() if chosen else repo_root() / "reports"


@contextlib.contextmanager
def using_workdir(path: str | os.PathLike | None) -> Iterator[None]:
    """Set ``$MM2CT_WORKDIR`` (made absolute, so that notebook kernels and worker processes with another working
    directory agree) for the duration of the block; ``None`` changes nothing."""
    if path is None:
        yield
        return
    old = os.environ.get(WORKDIR_ENV)
    os.environ[WORKDIR_ENV] = str(Path(path).expanduser().absolute())
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(WORKDIR_ENV, None)
        else:
            os.environ[WORKDIR_ENV] = old


@dataclass
class Workspace:
    cfg: Config
    root: Path                       # the work directory

    @property
    def profile(self) -> str:
        return self.cfg.profile

    @property
    def data_root(self) -> Path:
        """The dataset folder: the user's (data.root) or the generated phantom."""
        if self.cfg.data.root:
            return Path(self.cfg.data.root).expanduser()
        return self.root / "data" / "generated" / self.profile / "phantom"

    @property
    def uses_phantom(self) -> bool:
        return not self.cfg.data.root

    @property
    def cache_dir(self) -> Path:
        return self.root / "data" / "cache" / self.profile

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs" / self.profile

    @property
    def reports_dir(self) -> Path:
        return self._reports or reports_root() / self.profile

    _reports: Path | None = None


def resolve(profile: str = "smoke", data_dir: str | os.PathLike | None = None,
            reports_dir: str | os.PathLike | None = None, root: str | os.PathLike | None = None,
            **overrides: Any) -> Workspace:
    """Load the profile (validated), and fix the folders for this run (``root``: the work directory, see
    ``workdir``); creates the reports folder."""
    cfg = load_profile(profile, data_dir=data_dir, **overrides)
    ws = Workspace(cfg=cfg, root=workdir(root))
    ws._reports = Path(reports_dir) if reports_dir else reports_root() / ws.profile
    ws.reports_dir.mkdir(parents=True, exist_ok=True)
    return ws
