"""Evaluation (mm2ct.evaluate), which makes every number of Tables 1 and 2: predictions of a fusion model carry
its fused image; to_hu inverts the CT normalisation exactly; score gives hand-computed rows; evaluate writes what
score gives, for a trained model and for the template."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from mm2ct.config import load_profile
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


# ------------------------------------------------------------------------------------------------ to_hu
def _meta(ct_norm: dict, scales: dict[str, float] | None = None) -> dict:
    return {"normalisers": {"ct": {**ct_norm, "inference_scale": 123.0}},   # inference_scale: not a field
            "patients": {p: ({"scales": {"ct": s}} if s is not None else {}) for p, s in (scales or {}).items()}}


def test_to_hu_inverts_the_window_normalisation_exactly() -> None:
    from mm2ct.data.preprocess import IntensityNormaliser, hu_to_unit
    from mm2ct.evaluate import to_hu

    cfg = load_profile("smoke")
    meta = _meta(IntensityNormaliser.for_ct(cfg.data).to_dict(), {"P0": None})
    hu = np.array([-1024.0, -1000.0, 0.0, 40.0, 200.0, 1000.0, 3071.0], np.float32)
    x = hu_to_unit(hu, cfg.data).astype(np.float32)
    np.testing.assert_allclose(to_hu(x, "P0", meta), hu, atol=1e-3)     # float32: 4095 HU over [-1, 1]
    assert to_hu(np.float32(-1.0), "P0", meta) == -1024.0 and to_hu(np.float32(1.0), "P0", meta) == 3071.0
    assert to_hu(np.float32(0.0), "P0", meta) == pytest.approx((3071.0 - 1024.0) / 2)


def test_to_hu_uses_each_patients_syndiff_scale() -> None:
    from mm2ct.data.preprocess import IntensityNormaliser
    from mm2ct.evaluate import to_hu

    norm = IntensityNormaliser("syndiff", -1024.0, 3071.0, global_max=2.5)
    meta = _meta(norm.to_dict(), {"A": 400.0, "B": 800.0})
    hu = np.array([-1024.0, 0.0, 500.0, 1000.0], np.float32)
    for p, s in (("A", 400.0), ("B", 800.0)):
        np.testing.assert_allclose(to_hu(norm.apply(hu, s), p, meta), hu, rtol=1e-6, atol=1e-3)
        # x = -1 is the window's lower end; x = 1 is lower + scale * global_max (the patient's own range)
        assert to_hu(np.float32(-1.0), p, meta) == pytest.approx(-1024.0)
        assert to_hu(np.float32(1.0), p, meta) == pytest.approx(-1024.0 + s * 2.5)


# ------------------------------------------------------------------------------------------------ score
HU_SPAN = 3071.0 + 1024.0


def _unit(hu):
    return ((np.asarray(hu, np.float64) + 1024.0) * (2.0 / HU_SPAN) - 1.0).astype(np.float32)


def _hand_slice():
    """16 x 16 CT in HU: air outside a 8 x 8 body (0 HU) with 8 px of bone (1000 HU) and 4 px at 150 HU; one
    3071 HU pixel outside the body (so every slice peaks at 1 in the paper-style mapping)."""
    ct = np.full((16, 16), -1024.0)
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 1
    ct[4:12, 4:12] = 0.0
    ct[6:8, 6:10] = 1000.0
    ct[9, 6:10] = 150.0
    ct[0, 0] = 3071.0
    return ct, mask


def test_score_hand_computed_rows() -> None:
    """P0: prediction = CT + 100 HU in the body (two slices); P1: the flat 0 HU template (two slices)."""
    from mm2ct.data.preprocess import IntensityNormaliser
    from mm2ct.evaluate import score
    from mm2ct.metrics import synthrad_metrics

    ct, mask = _hand_slice()
    plus = np.where(mask > 0, ct + 100.0, ct)
    template = _unit(np.zeros((16, 16)))
    pred = {"pred": np.stack([_unit(plus), _unit(plus), template, template]),
            "ct": np.stack([_unit(ct)] * 4), "mask": np.stack([mask] * 4),
            "patient": np.array(["P0", "P0", "P1", "P1"]), "slice": np.array([1, 0, 0, 1])}
    meta = _meta(IntensityNormaliser("window", -1024.0, 3071.0).to_dict(), {"P0": None, "P1": None})
    slices, patients = score(pred, meta, template)

    # paper style, P0: [0, 1] = (HU + 1024) / 4095, both maxima 1 (the 3071 HU pixel); 64 px off by 100 / 4095
    psnr0 = 10 * np.log10(1.0 / (64 / 256 * (100.0 / HU_SPAN) ** 2))
    g01 = (ct + 1024.0) / HU_SPAN
    ssim0 = 100 * structural_similarity(g01, (plus + 1024.0) / HU_SPAN, data_range=1.0, win_size=7,
                                        gaussian_weights=False, use_sample_covariance=True)
    assert [(r["patient"], r["slice"]) for r in slices] == [("P0", 1), ("P0", 0), ("P1", 0), ("P1", 1)]
    for r in slices[:2]:
        assert r["psnr"] == pytest.approx(psnr0, abs=1e-3) and r["ssim"] == pytest.approx(ssim0, abs=1e-3)
    p0, p1 = patients
    assert (p0["patient"], p0["n_slices"], p1["patient"]) == ("P0", 2, "P1")
    assert p0["psnr"] == pytest.approx(psnr0, abs=1e-3) and p0["ssim"] == pytest.approx(ssim0, abs=1e-3)
    # SynthRAD style in the body (fewer than 7 slices: per slice, averaged): a constant 100 HU offset
    assert p0["mae_hu"] == pytest.approx(100.0, abs=1e-2)
    assert p0["psnr_hu"] == pytest.approx(20 * np.log10(4024.0 / 100.0), abs=1e-3)
    assert p0["ssim_hu"] == pytest.approx(synthrad_metrics(plus, ct, mask)["ssim"], abs=1e-5)
    # bone (> 200 HU): the 8 bone px stay bone, the 4 px at 150 HU become 250 HU: Dice 2 * 8 / (8 + 12)
    assert p0["dice_bone"] == pytest.approx(0.8)
    assert p0["input_usage"] == pytest.approx(1.0, abs=1e-6)     # departs from the template as the CT does
    # P1, the template: |0 - CT| in the body = (8 * 1000 + 4 * 150) / 64; no bone; no input used
    assert p1["mae_hu"] == pytest.approx(8600.0 / 64, abs=1e-2)
    assert p1["dice_bone"] == 0.0 and p1["input_usage"] == 0.0
    # without a template there is no input usage
    assert np.isnan(score(pred, meta)[1][0]["input_usage"])


# ------------------------------------------------------------------------------------------------ evaluate
@pytest.fixture(scope="module")
def smoke_ws(tmp_path_factory):
    """A smoke workspace with its slice cache and an untrained CycleGAN checkpoint (no training needed)."""
    from mm2ct.checkpoints import EMA, atomic_save, make_checkpoint, run_dir
    from mm2ct.data.slices import ensure_cache, load_normalisers
    from mm2ct.workspace import resolve

    root = tmp_path_factory.mktemp("eval")
    ws = resolve("smoke", root=root, reports_dir=root / "reports")
    cache = ensure_cache(ws, progress=False)
    torch.manual_seed(0)
    tr = build("cyclegan_t1", ws.cfg)
    norms = {k: n.to_dict() for k, n in load_normalisers(cache).items()}
    ck = make_checkpoint(tr, EMA(tr.generators(), ws.cfg.train.ema_decay), None, norms, "cyclegan_t1", ws.cfg,
                         1, 2, 12.5, 1, 3.0, "abc1234", 42)
    run_dir(ws, "cyclegan_t1").mkdir(parents=True)
    atomic_save(ck, run_dir(ws, "cyclegan_t1") / "best.pt")
    return ws


def test_evaluate_writes_the_numbers_score_gives(smoke_ws) -> None:
    import pandas as pd

    from mm2ct.data.slices import SliceDataset
    from mm2ct.evaluate import EVAL_FORMAT, evaluate, score
    from mm2ct.template import mean_training_ct

    ws = smoke_ws
    summary = evaluate(ws, "cyclegan_t1", progress=False)
    out = ws.runs_dir / "cyclegan_t1" / "eval"
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["eval_format"] == EVAL_FORMAT and summary["checkpoint"] == "runs/smoke/cyclegan_t1/best.pt"
    assert (summary["seed"], summary["best_val_psnr"], summary["train_commit"]) == (42, 12.5, "abc1234")
    assert summary["bone_threshold_hu"] == 200.0 and summary["data"] == "data/generated/smoke/phantom"
    with np.load(out / "predictions.npz") as z:
        pred = {k: z[k] for k in z.files}
    meta = SliceDataset(ws.cache_dir, "test").meta
    slices, patients = score(pred, meta, mean_training_ct(ws.cache_dir))
    assert summary["n_slices"] == len(slices) == ws.cfg.eval.max_test_slices
    assert summary["psnr"] == pytest.approx(np.mean([r["psnr"] for r in slices]))
    for k in ("mae_hu", "psnr_hu", "ssim_hu", "dice_bone", "input_usage"):
        vals = np.array([r[k] for r in patients], float)
        assert summary[k] == pytest.approx(np.nanmean(vals), nan_ok=True), k
        assert summary[f"{k}_std"] == pytest.approx(np.nanstd(vals), nan_ok=True), k
    assert pd.read_csv(out / "patients.csv")["mae_hu"].tolist() == pytest.approx([r["mae_hu"] for r in patients])


def test_the_template_is_evaluated_like_a_model(smoke_ws) -> None:
    """The mean training CT, no checkpoint, one evaluation for every seed: its input usage is 0."""
    from mm2ct.data.slices import SliceDataset
    from mm2ct.evaluate import evaluate, to_hu

    ws = smoke_ws
    s = evaluate(ws, "template", seed=7, progress=False)
    out = ws.runs_dir / "template" / "eval"
    assert json.loads((out / "summary.json").read_text()) == s and not (ws.runs_dir / "template-seed7").exists()
    assert (s["model"], s["seed"], s["checkpoint"]) == ("template", None, None)
    train_ct = np.asarray(SliceDataset(ws.cache_dir, "train").arrays["ct"], np.float64).mean(0)
    with np.load(out / "predictions.npz") as z:
        np.testing.assert_allclose(z["pred"], np.broadcast_to(train_ct, z["pred"].shape), atol=1e-6)
        meta = SliceDataset(ws.cache_dir, "test").meta
        np.testing.assert_allclose(z["pred_hu"][0], to_hu(z["pred"][0], str(z["patient"][0]), meta))
    assert s["input_usage"] == 0.0 and np.isfinite(s["mae_hu"]) and 0.0 <= s["dice_bone"] <= 1.0


def test_evaluate_refuses_a_checkpoint_trained_with_other_settings(tmp_path, capsys) -> None:
    """A run is evaluated under the settings it was trained with: after an edit of the profile (data.hu_max here)
    evaluate refuses, naming the checkpoint and the field, and leaves the summary and the slice cache as they were;
    the evaluation's own settings (eval.*) and where it runs (train.device, scan.backend) may differ."""
    import json

    from mm2ct.checkpoints import RunError
    from mm2ct.cli import main
    from mm2ct.evaluate import evaluate
    from mm2ct.train import train
    from mm2ct.workspace import resolve

    def ws(**over):
        return resolve("smoke", root=tmp_path, reports_dir=tmp_path / "reports", **over)

    r = train(ws(), "cyclegan_t1", progress=False, log=lambda *a: None)
    first = evaluate(ws(), "cyclegan_t1", progress=False)
    summary = r.run_dir / "eval" / "summary.json"
    meta = ws().cache_dir / "meta.json"
    stamps = summary.read_text(), meta.stat().st_mtime_ns
    with pytest.raises(RunError, match=r"best.pt: was trained with other settings.*data.hu_max: 3071.0 in the "
                                       r"checkpoint, 2000.0 now.*--fresh"):
        evaluate(ws(data={"hu_max": 2000.0}), "cyclegan_t1", progress=False)
    assert (summary.read_text(), meta.stat().st_mtime_ns) == stamps
    other = tmp_path / "edited.yaml"
    other.write_text("extends: smoke\nprofile: smoke\ndata:\n  hu_max: 2000.0\n")
    rc = main(["evaluate", "--profile", str(other), "--model", "cyclegan_t1", "--workdir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and "data.hu_max" in err and "Traceback" not in err
    again = evaluate(ws(eval={"max_test_slices": 2}, scan={"backend": "torch"}), "cyclegan_t1", progress=False)
    assert again["n_slices"] == 2 and first["n_slices"] == 4
    assert json.loads(summary.read_text())["n_slices"] == 2
