"""The template: a "model" that ignores the MR and always outputs the mean training CT.

It is the floor every translator has to beat: a model that has not learned to use its input scores about what the
template scores. Its synthetic CT is the pixelwise mean of the training CT slices of the slice cache, in the
network's [-1, 1] space, mapped to HU with each test patient's CT normaliser exactly as a prediction is
(``mm2ct.evaluate.to_hu``; docs/data.md §8). It has no weights, no training and no seed: ``mm2ct.evaluate.evaluate``
evaluates it once into ``runs/<profile>/template/eval/`` and every seed of a table reads that evaluation.

    tr = TemplateTranslator(mean_training_ct(cache_dir))    # predicts like a translator (mm2ct.predict)
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from mm2ct.workspace import Workspace

TEMPLATE = "template"   # its model name in runs/, summaries and tables


def template_dir(ws: Workspace) -> Path:
    """``runs/<profile>/template``: one folder for every seed (the template has no seed)."""
    return ws.runs_dir / TEMPLATE


def mean_training_ct(cache_dir: str | os.PathLike) -> np.ndarray:
    """The pixelwise mean of the cache's training CT slices, (S, S) float32 in [-1, 1]."""
    from mm2ct.data.slices import SliceDataset

    ct = SliceDataset(cache_dir, "train").arrays["ct"]   # (N, S, S), memory-mapped
    if len(ct) == 0:
        raise ValueError(f"{cache_dir}: the slice cache has no training slice to average")
    return np.asarray(ct, np.float64).mean(axis=0).astype(np.float32)


class TemplateTranslator(torch.nn.Module):
    """The template as a translator for ``mm2ct.predict.predict_batches``: every draw is the mean training CT
    ``ct`` ((S, S), [-1, 1]), whatever the MR (it reads T1 only to know the batch size)."""
    family = "template"

    def __init__(self, ct: np.ndarray):
        super().__init__()
        self.name, self.sources = TEMPLATE, ("t1",)
        self.register_buffer("ct", torch.as_tensor(np.asarray(ct, np.float32))[None])   # (1, S, S)

    @torch.no_grad()
    def sample(self, sources: Mapping[str, torch.Tensor], n: int, seed: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` identical draws of the template: (n, B, 1, S, S)."""
        b = sources[self.sources[0]].shape[0]
        return self.ct.to(sources[self.sources[0]].device).expand(n, b, *self.ct.shape).clone()
