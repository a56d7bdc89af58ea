"""The process a computation runs in: device, seeds, threads (what makes two runs give the same numbers)."""
from __future__ import annotations

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
