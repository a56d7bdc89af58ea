"""The one loop that runs a translator over many slices: validation, evaluation and NIfTI inference all use it.

``predict_batches`` walks a slice dataset in batches and yields, per batch, the dataset items and ``samples`` draws
of the synthetic CT, all from one random stream seeded once (method.md §2.8, open choice 21): the same seed and batch
size give the same predictions.

    for batch in predict_batches(tr, dataset, seed=42, device=dev, batch_size=8):
        batch.items, batch.draws      # list of dataset items; (K, B, H, W) float32 in [-1, 1]
"""
from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class Batch:
    """One batch: the dataset items, the draws (K, B, H, W) and, with ``condition=True``, what the generators read
    (``tr.condition``: Φ(T1, T2) for MM2CT), (B, C, H, W)."""
    start: int
    items: list[dict[str, Any]]
    draws: np.ndarray
    condition: np.ndarray | None = None


class ArraySlices:
    """A dataset view of normalised slices: ``{source: (Z, S, S) array}`` -> items ``{source: (1, S, S)}``."""

    def __init__(self, slices: Mapping[str, np.ndarray]):
        self.slices = dict(slices)
        self.n = next(iter(self.slices.values())).shape[0]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {k: np.ascontiguousarray(v[i : i + 1], dtype=np.float32) for k, v in self.slices.items()}


@torch.no_grad()
def predict_batches(tr, dataset, seed: int, device: torch.device, batch_size: int = 8,
                    max_slices: int | None = None, samples: int = 1, condition: bool = False,
                    progress: bool = True, desc: str | None = None) -> Iterator[Batch]:
    """Translate the first ``max_slices`` items of ``dataset`` (all by default) in batches of ``batch_size``.

    Each item holds the translator's sources as (1, S, S) arrays or tensors. ``samples`` draws per slice come from
    ``tr.sample`` (one draw of a diffusion model equals ``tr.translate``; CycleGAN's draws are identical).
    The translator is put in eval mode for the loop and back in its previous mode afterwards.
    """
    from tqdm.auto import tqdm

    if batch_size < 1 or samples < 1:
        raise ValueError(f"predict_batches: batch_size and samples must be >= 1, got {batch_size}, {samples}")
    was_training = tr.training
    tr.eval()
    n = len(dataset) if max_slices is None else min(len(dataset), max_slices)
    g = torch.Generator(device=device).manual_seed(seed)
    label = desc or f"{tr.name}: slices" + (f" x {samples} samples" if samples > 1 else "")
    try:
        with tqdm(total=n, desc=label, unit="slice", disable=not progress, leave=False, file=sys.stderr,
                  dynamic_ncols=True) as bar:
            for start in range(0, n, batch_size):
                items = [dataset[i] for i in range(start, min(n, start + batch_size))]
                sources = {s: torch.stack([torch.as_tensor(it[s]) for it in items]).to(device)
                           for s in tr.sources}  # (B, 1, S, S) each
                draws = tr.sample(sources, samples, generator=g)[:, :, 0].float().cpu().numpy()  # (K, B, S, S)
                cond = tr.condition(tr.mr(sources)).float().cpu().numpy() if condition else None
                yield Batch(start, items, draws, cond)
                bar.update(len(items))
    finally:
        tr.train(was_training)
