"""Evaluation helpers (mm2ct.evaluate): predictions of a fusion model carry its fused image, and the fused-image
statistics reported beside Table 2."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mm2ct.evaluate import fused_stats, predict
from mm2ct.translators import build


def _slices(cfg, n=5):
    g = torch.Generator().manual_seed(0)
    s = cfg.data.image_size
    return [{**{k: (torch.rand(1, s, s, generator=g) * 2 - 1).numpy() for k in ("t1", "t2", "ct")},
             "mask": np.ones((1, s, s), np.uint8), "patient": f"P{i // 3}", "slice": i % 3} for i in range(n)]


@pytest.mark.parametrize("name", ["mm2ct", "syndiff_t2"])
def test_predict_keeps_the_fused_image_of_fusion_models(cfg, name) -> None:
    torch.manual_seed(0)
    tr = build(name, cfg)
    data = _slices(cfg)
    out = predict(tr, data, seed=42, device=torch.device("cpu"), batch_size=2, progress=False)
    assert out["pred"].shape == (5, cfg.data.image_size, cfg.data.image_size)
    if name != "mm2ct":
        assert "fused" not in out
        return
    t1 = torch.stack([torch.as_tensor(d["t1"]) for d in data])
    t2 = torch.stack([torch.as_tensor(d["t2"]) for d in data])
    with torch.no_grad():
        expected = tr.fusion(t1, t2)[:, 0].numpy()
    np.testing.assert_allclose(out["fused"], expected, atol=1e-6)
    assert list(out["patient"]) == ["P0", "P0", "P0", "P1", "P1"]


def test_fused_stats_known_values() -> None:
    t1 = np.linspace(-1, 1, 50).reshape(2, 5, 5)
    pred = {"t1": t1, "t2": -t1, "fused": 0.1 * t1 + 0.3}
    s = fused_stats(pred)
    assert s["fused_std"] == pytest.approx(0.1 * t1.std())
    assert s["fused_corr_t1"] == pytest.approx(1.0) and s["fused_corr_t2"] == pytest.approx(-1.0)
    flat = fused_stats({**pred, "fused": np.zeros_like(t1)})
    assert flat["fused_std"] == 0.0 and np.isnan(flat["fused_corr_t1"])   # a constant Φ has no correlation
