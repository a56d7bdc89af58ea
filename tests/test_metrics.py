"""mm2ct.metrics: hand-computed values, agreement with scikit-image, SynthRAD conventions, aggregation, errors."""
import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.util import crop

from mm2ct import metrics as M


def _pair(shape=(32, 32), noise=0.1, seed=0):
    rng = np.random.default_rng(seed)
    gt = rng.uniform(-1, 1, shape)
    pred = np.clip(gt + noise * rng.standard_normal(shape), -1, 1)
    return pred, gt


# ---------------------------------------------------------------------------------------------------------------
# paper style


def test_paper_psnr_hand_computed():
    # gt: mid grey (0.5 after mapping) with one peak pixel at 1; pred: +0.1 (mapped) everywhere but the peak.
    # Both maxima are 1, so max-normalisation is the identity and MSE = (N - 1) / N * 0.1^2.
    gt = np.zeros((16, 16))
    gt[3, 4] = 1.0
    pred = gt + 0.2
    pred[3, 4] = 1.0
    n = gt.size
    expected = 10 * math.log10(1.0 / ((n - 1) / n * 0.1**2))
    assert M.paper_metrics(pred, gt)["psnr"] == pytest.approx(expected, rel=1e-12)


def test_paper_identical_gives_inf_psnr_and_ssim_100():
    _, gt = _pair()
    out = M.paper_metrics(gt, gt)
    assert out["psnr"] == math.inf
    assert out["ssim"] == pytest.approx(100.0, abs=1e-9)


def test_paper_each_image_divided_by_its_own_max():
    # pred01 = 0.5 * gt01 -> identical after dividing each by its own maximum
    _, gt = _pair(seed=1)
    pred = ((gt + 1) / 2) * 0.5 * 2 - 1
    out = M.paper_metrics(pred, gt)
    assert out["psnr"] == math.inf
    assert out["ssim"] == pytest.approx(100.0, abs=1e-9)


def test_paper_matches_skimage_called_directly():
    pred, gt = _pair((40, 36), seed=2)
    p01, g01 = (pred + 1) / 2, (gt + 1) / 2
    p01, g01 = p01 / p01.max(), g01 / g01.max()
    ref_psnr = peak_signal_noise_ratio(g01, p01, data_range=g01.max())
    ref_ssim = 100 * structural_similarity(g01, p01, data_range=g01.max())
    out = M.paper_metrics(pred, gt)
    assert out["psnr"] == pytest.approx(ref_psnr, rel=1e-12)
    assert out["ssim"] == pytest.approx(ref_ssim, rel=1e-12)
    assert isinstance(out["psnr"], float) and isinstance(out["ssim"], float)


def test_paper_gt_without_signal_is_nan_and_black_prediction_is_scored():
    pred, gt = _pair(seed=3)
    black = -np.ones_like(gt)
    out = M.paper_metrics(pred, black)
    assert math.isnan(out["psnr"]) and math.isnan(out["ssim"])
    out = M.paper_metrics(black, gt)  # all-zero prediction: finite (poor) scores, not silently dropped
    g01 = (gt + 1) / 2
    g01 = g01 / g01.max()
    assert out["psnr"] == pytest.approx(10 * math.log10(1.0 / np.mean(g01**2)), rel=1e-12)
    assert math.isfinite(out["ssim"]) and out["ssim"] < 10


def test_syndiff_val_psnr_divides_by_mean():
    pred, gt = _pair(seed=4)
    p01, g01 = (pred + 1) / 2, (gt + 1) / 2
    p01, g01 = p01 / p01.mean(), g01 / g01.mean()
    ref = peak_signal_noise_ratio(g01, p01, data_range=g01.max())
    assert M.syndiff_val_psnr(pred, gt) == pytest.approx(ref, rel=1e-12)
    # mean-normalisation makes a global scale of the [0, 1] image irrelevant
    scaled = ((gt + 1) / 2) * 0.7 * 2 - 1
    assert M.syndiff_val_psnr(scaled, gt) > 250  # equal up to rounding (0.7 is not a power of two)
    assert math.isnan(M.syndiff_val_psnr(pred, -np.ones_like(gt)))


# ---------------------------------------------------------------------------------------------------------------
# SynthRAD style


def _volume(shape=(9, 20, 20), seed=0):
    rng = np.random.default_rng(seed)
    gt = rng.uniform(-1100, 3200, shape)
    pred = gt + 60 * rng.standard_normal(shape)
    mask = np.zeros(shape)
    mask[2:-2, 4:-4, 5:-3] = 1
    return pred, gt, mask


def _official_ssim_2023(gt, pred, mask):
    """Transcription of SynthRAD2023 ImageMetrics.ssim (float32, as the challenge loads the arrays)."""
    lo, hi = -1024.0, 3000.0
    gt = np.clip(gt.astype(np.float32), lo, hi)
    pred = np.clip(pred.astype(np.float32), lo, hi)
    mask = np.where(mask > 0, 1.0, 0.0)
    gt = np.where(mask == 0, lo, gt) - lo
    pred = np.where(mask == 0, lo, pred) - lo
    _, ssim_map = structural_similarity(gt, pred, data_range=hi - lo, full=True)
    return crop(ssim_map, 3)[crop(mask, 3).astype(bool)].mean(dtype=np.float64)


def test_synthrad_constant_offset_hand_computed():
    # 2-D slice, gt 0 HU, pred 100 HU, mask everywhere: MAE 100, PSNR 20 log10(4024 / 100),
    # SSIM = luminance term only (zero variance): (2 a b + C1) / (a^2 + b^2 + C1) with a = 1024, b = 1124.
    gt = np.zeros((12, 12))
    pred = gt + 100.0
    mask = np.ones_like(gt)
    out = M.synthrad_metrics(pred, gt, mask)
    c1 = (0.01 * 4024) ** 2
    assert out["mae"] == pytest.approx(100.0, rel=1e-12)
    assert out["psnr"] == pytest.approx(20 * math.log10(4024 / 100), rel=1e-12)
    assert out["ssim"] == pytest.approx((2 * 1024 * 1124 + c1) / (1024**2 + 1124**2 + c1), rel=1e-9)


def test_synthrad_clipping_affects_psnr_not_mae():
    gt = np.full((8, 8, 8), 3500.0)
    pred = np.full((8, 8, 8), 3000.0)
    mask = np.ones_like(gt)
    out = M.synthrad_metrics(pred, gt, mask)
    assert out["mae"] == pytest.approx(500.0)  # unclipped
    assert out["psnr"] == math.inf  # both clip to 3000
    out25 = M.synthrad_metrics(pred, gt, mask, version=2025)
    assert out25["mae"] == pytest.approx(500.0)
    assert out25["psnr"] == pytest.approx(20 * math.log10(4095 / 71), rel=1e-12)  # 3071 vs 3000


def test_synthrad_ignores_everything_outside_the_mask():
    pred, gt, mask = _volume()
    ref = M.synthrad_metrics(pred, gt, mask)
    wild = np.where(mask > 0, pred, 5000.0)  # junk outside the body, even beyond the window
    wild_gt = np.where(mask > 0, gt, -3000.0)
    for version in (2023, 2025):
        a = M.synthrad_metrics(pred, gt, mask, version=version)
        b = M.synthrad_metrics(wild, wild_gt, mask, version=version)
        assert a == pytest.approx(b, rel=1e-12)
    assert ref["mae"] == pytest.approx(np.abs(gt - pred)[mask > 0].mean(), rel=1e-12)


def test_synthrad_psnr_matches_skimage_on_clipped_mask_voxels():
    pred, gt, mask = _volume(seed=1)
    m = mask > 0
    ref = peak_signal_noise_ratio(np.clip(gt, -1024, 3000)[m], np.clip(pred, -1024, 3000)[m], data_range=4024)
    assert M.synthrad_metrics(pred, gt, mask)["psnr"] == pytest.approx(ref, rel=1e-12)


def test_synthrad_ssim_matches_official_transcription_3d():
    pred, gt, mask = _volume(seed=2)
    mask = mask * 7.0  # non-binary mask values are binarised (> 0)
    out = M.synthrad_metrics(pred, gt, mask)
    assert out["ssim"] == pytest.approx(_official_ssim_2023(gt, pred, mask), rel=1e-5)


def test_synthrad_outside_mask_is_filled_with_minus_1024():
    # filling by hand and scoring with a full mask over the crop region gives the same SSIM map mean
    pred, gt, mask = _volume(seed=3)
    m = mask > 0
    g = np.where(m, np.clip(gt, -1024, 3000), -1024) + 1024
    p = np.where(m, np.clip(pred, -1024, 3000), -1024) + 1024
    _, ssim_map = structural_similarity(g, p, data_range=4024, full=True)
    expected = crop(ssim_map, 3)[crop(m, 3)].mean()
    assert M.synthrad_metrics(pred, gt, mask)["ssim"] == pytest.approx(expected, rel=1e-12)


def test_synthrad_full_mask_ssim_equals_skimage_mean_with_its_3_voxel_crop():
    pred, gt, _ = _volume(seed=4)
    full = np.ones_like(gt)
    g = np.clip(gt, -1024, 3000) + 1024
    p = np.clip(pred, -1024, 3000) + 1024
    assert M.synthrad_metrics(pred, gt, full)["ssim"] == pytest.approx(
        structural_similarity(g, p, data_range=4024), rel=1e-12
    )


def test_synthrad_mask_only_on_the_border_or_empty():
    pred, gt, _ = _volume(seed=5)
    rim = np.zeros_like(gt)
    rim[:, :3, :] = 1  # within the 3-voxel crop: MAE/PSNR defined, SSIM has no voxel left
    out = M.synthrad_metrics(pred, gt, rim)
    assert math.isfinite(out["mae"]) and math.isfinite(out["psnr"]) and math.isnan(out["ssim"])
    out = M.synthrad_metrics(pred, gt, np.zeros_like(gt))
    assert all(math.isnan(v) for v in out.values())


def test_synthrad_identical_and_2d_slices():
    pred, gt, mask = _volume(seed=6)
    out = M.synthrad_metrics(gt, gt, mask)
    assert out == {"mae": 0.0, "psnr": math.inf, "ssim": pytest.approx(1.0)}
    out2d = M.synthrad_metrics(pred[4], gt[4], mask[4])  # slice-wise use: 2-D SSIM
    assert set(out2d) == {"mae", "psnr", "ssim"} and 0 < out2d["ssim"] <= 1


def test_synthrad_2025_window_changes_psnr_and_ssim_only():
    pred, gt, mask = _volume(seed=7)
    a = M.synthrad_metrics(pred, gt, mask, version=2023)
    b = M.synthrad_metrics(pred, gt, mask, version=2025)
    assert a["mae"] == pytest.approx(b["mae"], rel=1e-12)
    assert a["psnr"] != b["psnr"] and a["ssim"] != b["ssim"]


# ---------------------------------------------------------------------------------------------------------------
# aggregation


ROWS = [
    {"patient": "A", "slice": 0, "psnr": 10.0, "ssim": 80.0},
    {"patient": "A", "slice": 1, "psnr": 20.0, "ssim": 90.0},
    {"patient": "A", "slice": 2, "psnr": math.nan, "ssim": math.nan},  # unscoreable slice, skipped
    {"patient": "B", "slice": 0, "psnr": 30.0, "ssim": 70.0},
]


def test_aggregate_hand_made_table():
    out = M.aggregate(ROWS)
    assert set(out) == {"psnr", "ssim"}  # the int slice index is not a metric
    psnr = out["psnr"]
    assert psnr["slice_mean"] == pytest.approx(20.0)  # (10 + 20 + 30) / 3
    assert psnr["patient_mean"] == pytest.approx(22.5)  # (15 + 30) / 2
    assert psnr["patient_std"] == pytest.approx(7.5)  # population std of (15, 30)
    assert (psnr["n_slices"], psnr["n_patients"]) == (3, 2)
    assert out["ssim"]["slice_mean"] == pytest.approx(80.0)
    assert out["ssim"]["patient_mean"] == pytest.approx(77.5)
    assert M.aggregate(ROWS, ddof=1)["psnr"]["patient_std"] == pytest.approx(15 / math.sqrt(2))
    assert M.per_patient_means(ROWS) == {"A": {"psnr": 15.0, "ssim": 85.0}, "B": {"psnr": 30.0, "ssim": 70.0}}


def test_aggregate_explicit_keys_single_patient_and_all_nan_patient():
    rows = [{"patient": 1, "psnr": 12.0}, {"patient": 2, "psnr": math.nan}]
    out = M.aggregate(rows, keys=["psnr"])["psnr"]
    assert out["patient_mean"] == 12.0 and out["patient_std"] == 0.0 and out["n_patients"] == 1
    assert math.isnan(M.aggregate(rows, ddof=1)["psnr"]["patient_std"])


def test_aggregate_of_real_metric_rows():
    rows = []
    for patient, seed in (("P1", 0), ("P1", 1), ("P2", 2)):
        pred, gt = _pair(seed=seed)
        rows.append({"patient": patient, **M.paper_metrics(pred, gt)})
    out = M.aggregate(rows)
    assert out["psnr"]["n_slices"] == 3 and out["ssim"]["n_patients"] == 2


@pytest.mark.parametrize(
    "rows, match",
    [
        ([], "empty"),
        ([{"psnr": 1.0}], "patient"),
        ([{"patient": "A", "psnr": 1.0}, {"patient": "B"}], "row 1"),
        ([{"patient": "A", "name": "x"}], "float-valued"),
    ],
)
def test_aggregate_errors(rows, match):
    with pytest.raises(ValueError, match=match):
        M.aggregate(rows)


# ---------------------------------------------------------------------------------------------------------------
# input validation


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(32, 32\).*\(32, 31\)"):
        M.paper_metrics(np.zeros((32, 32)), np.zeros((32, 31)))
    with pytest.raises(ValueError, match=r"\(8, 8, 8\).*\(8, 8, 9\)"):
        M.synthrad_metrics(np.zeros((8, 8, 8)), np.zeros((8, 8, 9)), np.ones((8, 8, 8)))
    with pytest.raises(ValueError, match=r"mask has shape \(8, 8\)"):
        M.synthrad_metrics(np.zeros((8, 8, 8)), np.zeros((8, 8, 8)), np.ones((8, 8)))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: M.paper_metrics(np.zeros((1, 16, 16)), np.zeros((1, 16, 16))), "2-D"),
        (lambda: M.paper_metrics(np.zeros((16, 5)), np.zeros((16, 5))), ">= 7"),
        (lambda: M.paper_metrics(np.full((16, 16), np.nan), np.zeros((16, 16))), "pred contains"),
        (lambda: M.paper_metrics(np.zeros((16, 16)), np.full((16, 16), 40.0)), r"gt must be .*\[-1, 1\]"),
        (lambda: M.syndiff_val_psnr(np.full((16, 16), 255.0), np.zeros((16, 16))), r"pred must be"),
        (lambda: M.synthrad_metrics(np.zeros((5, 16, 16)), np.zeros((5, 16, 16)), np.ones((5, 16, 16))), ">= 7"),
        (lambda: M.synthrad_metrics(np.zeros(16), np.zeros(16), np.ones(16)), "2-D or 3-D"),
        (lambda: M.synthrad_metrics(np.zeros((8, 8)), np.zeros((8, 8)), np.ones((8, 8)), version=2024), "version"),
    ],
)
def test_invalid_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------------------------------------------------------
# bone Dice and input usage


def _body():
    mask = np.zeros((6, 6), np.uint8)
    mask[1:5, 1:5] = 1                                            # 16 body voxels
    return mask


def test_bone_dice_hand_computed():
    mask = _body()
    gt = np.zeros((6, 6))
    gt[1, 1:5] = 900.0                                            # 4 bone voxels
    pred = np.zeros((6, 6))
    pred[1, 1:3] = 500.0                                          # 2 of them ...
    pred[4, 1:3] = 300.0                                          # ... and 2 elsewhere in the body
    pred[0, :] = 1500.0                                           # outside the body mask: ignored
    assert M.bone_dice(pred, gt, mask) == pytest.approx(2 * 2 / (4 + 4))
    assert M.bone_dice(gt, gt, mask) == 1.0
    assert M.bone_dice(np.zeros((6, 6)), gt, mask) == 0.0       # no bone predicted where there is some
    at = np.where(gt > 0, 200.0, 0.0)                             # exactly 200 HU is not bone (strictly above)
    assert M.bone_dice(at, gt, mask) == 0.0
    assert M.bone_dice(pred, gt, mask, threshold=400.0) == pytest.approx(2 * 2 / (2 + 4))
    assert math.isnan(M.bone_dice(np.zeros((6, 6)), np.zeros((6, 6)), mask))   # no bone anywhere: undefined
    vol = np.stack([gt, gt])                                      # any rank: a patient's volume
    assert M.bone_dice(np.stack([pred, gt]), vol, np.stack([mask, mask])) == pytest.approx(2 * 6 / (8 + 8))


def test_bone_dice_rejects_bad_input():
    with pytest.raises(ValueError, match="shape mismatch"):
        M.bone_dice(np.zeros((6, 6)), np.zeros((6, 6)), np.ones((5, 6)))
    with pytest.raises(ValueError, match="pred_hu contains 1 non-finite"):
        M.bone_dice(np.array([[np.nan, 0.0]]), np.zeros((1, 2)), np.ones((1, 2)))


def test_input_usage_known_values():
    mask = _body()
    template = np.full((6, 6), 40.0)
    own = np.zeros((6, 6))
    own[1:5, 1:5] = np.arange(16).reshape(4, 4) * 10.0          # the patient's departure from the template
    gt = template + own
    assert M.input_usage(gt, gt, template, mask) == pytest.approx(1.0)
    assert M.input_usage(template, gt, template, mask) == 0.0    # the template itself
    assert M.input_usage(template + 5.0, gt, template, mask) == 0.0   # template plus a constant: no slice part
    assert M.input_usage(template - own, gt, template, mask) == pytest.approx(-1.0)
    assert M.input_usage(template + 2 * own + 7.0, gt, template, mask) == pytest.approx(1.0)   # scale-free
    noise_outside = gt + np.where(mask > 0, 0.0, 1e4 * np.random.default_rng(0).standard_normal((6, 6)))
    assert M.input_usage(noise_outside, gt, template, mask) == pytest.approx(1.0)   # only the body counts
    # three body voxels by hand: a = (1, 2, 3), b = (1, 3, 2) -> centred (-1, 0, 1), (-1, 1, 0) -> r = 1 / 2
    m3 = np.array([[1, 1, 1, 0]])
    t3 = np.zeros((1, 4))
    assert M.input_usage(np.array([[1.0, 2, 3, 50]]), np.array([[1.0, 3, 2, -50]]), t3, m3) == pytest.approx(0.5)
    assert math.isnan(M.input_usage(gt, template + 3.0, template, mask))   # truth = template: nothing to follow
    assert math.isnan(M.input_usage(gt, gt, template, np.zeros((6, 6))))   # empty mask
    with pytest.raises(ValueError, match="template_hu"):
        M.input_usage(gt, gt, template[:5], mask)
