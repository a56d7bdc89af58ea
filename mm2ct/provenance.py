"""What made a number: the code's commit, the machine, and paths that mean the same on every machine.

Checkpoints, evaluation summaries and reports record ``git_commit()`` and ``machine()``; every path they record goes
through ``portable_path``, so a committed report names ``runs/demo/mm2ct/eval/summary.json``, never the folder of the
machine that made it.
"""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from mm2ct import repo_root


def git_commit(root: str | os.PathLike | None = None) -> str:
    """The checkout's commit (with ``+dirty`` when it has uncommitted changes outside ``reports/``, whose tracked
    artefacts a reproduction itself rewrites), or ``unknown``."""
    try:
        root = repo_root() if root is None else root
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)reports"], cwd=root, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return (sha + ("+dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def portable_path(path: str | os.PathLike | None, *bases: str | os.PathLike | None) -> str | None:
    """``path`` relative to the first of ``bases`` (default: the repository) that contains it; a path outside all of
    them keeps only its last two parts, behind ``…/`` (a user's data folder is named, not located)."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.is_absolute():
        return p.as_posix()
    p = Path(os.path.abspath(p))
    for base in (*[b for b in bases if b is not None], repo_root()):
        base = Path(os.path.abspath(Path(base).expanduser()))
        if p == base or base in p.parents:
            return p.relative_to(base).as_posix() or "."
    return "…/" + "/".join(p.parts[-2:])


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine(threads: int | None = None) -> dict[str, object]:
    """The facts a floating-point result depends on: CPU, cores, torch threads, torch version, device."""
    import torch

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": threads or torch.get_num_threads(),
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
