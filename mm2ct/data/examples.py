"""Example slices for the notebooks: exactly what training sees (the profile's slice cache), never a notebook's own
resizing or normalisation.

    batch = example_batch(ws)            # {"t1", "t2", "ct", "mask": (1, 1, S, S) tensors in [-1, 1] / {0, 1}}
"""
from __future__ import annotations

import numpy as np
import torch


def example_batch(ws, split: str = "train", n: int = 1, progress: bool = False) -> dict[str, torch.Tensor | list]:
    """``n`` slices of ``split`` from the workspace's slice cache (built if missing, as training would), the ones
    with the largest body area, in cache order: {"t1", "t2" (or "mr"), "ct", "mask": (n, 1, S, S) float32
    tensors, "patient": [...], "slice": [...]}. MR and CT are normalised to [-1, 1] as the networks see them."""
    from mm2ct.data.slices import SliceDataset, ensure_cache

    data = SliceDataset(ensure_cache(ws, progress=progress), split, paired=True)
    if n < 1 or n > len(data):
        raise ValueError(f"example_batch: n must be in 1..{len(data)} for the {split} split, got {n}")
    area = np.asarray(data.arrays["mask"]).reshape(len(data), -1).sum(axis=1)  # (N,) body pixels per slice
    picks = sorted(np.argsort(-area, kind="stable")[:n].tolist())
    items = [data[i] for i in picks]
    out: dict[str, torch.Tensor | list] = {k: torch.stack([it[k] for it in items])
                                           for k in (*data.mr_keys, "ct", "mask")}
    out["patient"] = [it["patient"] for it in items]
    out["slice"] = [it["slice"] for it in items]
    return out
