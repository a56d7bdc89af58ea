"""The process a computation runs in: device, seeds, threads (what makes two runs give the same numbers)."""
from __future__ import annotations

import random

import numpy as np
import torch


def pick_device(name: str, field: str = "train.device") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a CUDA device asked for on a machine without one is an error
    naming ``field`` (the setting or option it came from)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"{field} is {name!r} but CUDA is not available here")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
