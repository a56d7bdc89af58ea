"""Where a profile's files live: the one place notebooks, the CLI and training agree on paths.

    data/generated/<profile>/phantom/   the embedded phantom volumes (when no data folder is given)
    data/cache/<profile>/               the slice cache built by `mm2ct prepare`
    runs/<profile>/<model>/             checkpoints, logs, resolved configs
    reports/<profile>/                  tables and figures; executed notebooks in reports/<profile>/executed/
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mm2ct import repo_root
from mm2ct.config import Config, load_profile


@dataclass
class Workspace:
    cfg: Config
    root: Path

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
        return self._reports or self.root / "reports" / self.profile

    _reports: Path | None = None


def resolve(profile: str = "smoke", data_dir: str | os.PathLike | None = None,
            reports_dir: str | os.PathLike | None = None, root: str | os.PathLike | None = None,
            **overrides: Any) -> Workspace:
    """Load the profile (validated), and fix the folders for this run; creates the reports folder."""
    cfg = load_profile(profile, data_dir=data_dir, **overrides)
    ws = Workspace(cfg=cfg, root=Path(root) if root else repo_root())
    if reports_dir:
        ws._reports = Path(reports_dir)
    ws.reports_dir.mkdir(parents=True, exist_ok=True)
    return ws
