"""The notebooks' example slices are the training slices themselves (cache, normalisation), not a re-make."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mm2ct.data.examples import example_batch
from mm2ct.data.slices import SliceDataset, ensure_cache
from mm2ct.workspace import resolve


def test_example_batch_is_what_training_reads(tmp_path) -> None:
    ws = resolve("smoke", root=tmp_path, reports_dir=tmp_path / "reports")
    batch = example_batch(ws, n=2)
    data = SliceDataset(ensure_cache(ws), "train", paired=True)
    area = np.asarray(data.arrays["mask"]).reshape(len(data), -1).sum(axis=1)
    picks = sorted(np.argsort(-area, kind="stable")[:2].tolist())
    assert batch["patient"] == [data.patients[i] for i in picks] and batch["slice"] == [data.slices[i] for i in picks]
    for k in ("t1", "t2", "ct", "mask"):
        assert batch[k].shape == (2, 1, 32, 32) and batch[k].dtype == torch.float32
        assert torch.equal(batch[k], torch.stack([data[i][k] for i in picks]))
    assert batch["ct"].min() >= -1 and batch["ct"].max() <= 1
    with pytest.raises(ValueError, match="n must be in 1.."):
        example_batch(ws, n=0)
