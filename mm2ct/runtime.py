"""The process a computation runs in: device, seeds, threads (what makes two runs give the same numbers)."""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from mm2ct.config import ConfigError


def pick_device(name: str, field: str = "train.device") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a CUDA device asked for on a machine without one is a ConfigError
    naming ``field`` (the setting or option it came from: ``train.device``, ``--device``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{field} is {name!r} but CUDA is not available here; use auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{field}: {name!r} is not a device (auto, cpu, cuda or cuda:N)") from None


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cpu_threads(threads: int, jobs: int = 1) -> int:
    """Torch threads for one CPU run: ``threads`` when set (> 0), else the cores shared among ``jobs`` runs."""
    import os

    return threads if threads > 0 else max(1, (os.cpu_count() or 1) // max(1, jobs))


@contextlib.contextmanager
def pinned_threads(threads: int):
    """Run a block with ``threads`` torch threads (> 0; 0 leaves them as they are), restoring them afterwards."""
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def reproducible(threads: int, deterministic: bool = True) -> None:
    """Pin this process's torch threads (when ``threads`` > 0) and ask for deterministic algorithms (warnings only
    where an operation has none): the same command then gives the same bits on this machine."""
    if threads > 0:
        torch.set_num_threads(threads)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
