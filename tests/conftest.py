"""Fixtures shared by the tests. The session's temporary work directory is set up by the repository's root
``conftest.py``, so that ``pytest notebooks/`` alone gets it too."""
from __future__ import annotations

import pytest
import torch

from mm2ct.config import load_profile


@pytest.fixture(scope="module")
def cfg():
    return load_profile("smoke")


@pytest.fixture(scope="module")
def make_images(cfg):
    """make_images(seed) -> {"t1", "t2", "ct"}: (2, 1, S, S) uniform in [-1, 1] at the profile's image size."""
    def make(seed: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        s = cfg.data.image_size
        return {k: torch.rand(2, 1, s, s, generator=g) * 2 - 1 for k in ("t1", "t2", "ct")}
    return make
