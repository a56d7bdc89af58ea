"""Image-similarity metrics: the paper-style slice protocol and the SynthRAD challenge protocol.

Two families, never to be mixed in one table (``docs/method.md`` Open choice 20, ``docs/data.md`` §1.5):

* **Paper style** (MM2CT / SynDiff / SelfRDB family; ``docs/method.md`` §2.9, §8.5): 2-D slices in the network's
  [-1, 1] range, each mapped to [0, 1] and divided by its own maximum; PSNR and SSIM x 100 with
  ``data_range = GT.max()`` (= 1).  Background is included, which inflates both numbers.
  -> :func:`paper_metrics` (one slice), :func:`syndiff_val_psnr` (SynDiff's validation PSNR, §2.7).
* **SynthRAD style** (``docs/data.md`` §2.3): CT in HU inside a body mask; MAE (HU), PSNR (dB) and SSIM on a fixed
  HU window.  -> :func:`synthrad_metrics` (one volume, or one 2-D slice).
* **Geometry and input use** (HU, body mask): :func:`bone_dice` (Dice of CT > 200 HU, the phantom-sized version of
  SynthRAD 2025's segmentation-based metrics) and :func:`input_usage` (how much of a prediction's departure from
  the mean training CT follows the patient's own).

:func:`aggregate` turns per-slice (or per-volume) rows into the mean over all rows and the mean +/- std across
patients (per-patient means first; SynDiff issue #47, SelfRDB ``utils.compute_metrics``).

Every function takes numpy arrays (anything ``np.asarray`` accepts, CPU tensors included), computes in float64
and returns plain Python floats.  Inputs that cannot be scored raise ``ValueError`` naming the argument and the
problem; slices that are legitimately unscoreable (no ground-truth signal, empty mask) give ``nan`` so that
:func:`aggregate`'s nan-means skip them, as SynDiff's ``np.nanmean`` does.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.util import crop

# skimage's SSIM defaults, spelled out so that a change of skimage default can never change our numbers:
# 7-voxel uniform window, K1 = 0.01, K2 = 0.03, sample covariance (docs/method.md §2.9, §8.5).
SSIM_WIN_SIZE = 7
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_CROP = (SSIM_WIN_SIZE - 1) // 2  # = 3, the border skimage (and SynthRAD's masked mean) drops

# SynthRAD clipping windows in HU (docs/data.md §2.3): 2023 -> data range 4024, 2025 -> 4095.
SYNTHRAD_RANGES: dict[int, tuple[float, float]] = {2023: (-1024.0, 3000.0), 2025: (-1024.0, 3071.0)}

# Paper-style inputs are in [-1, 1]; allow interpolation overshoot (bicubic resizing) but catch HU or [0, 255].
_UNIT_RANGE_TOL = 0.1


# ---------------------------------------------------------------------------------------------------------------
# input checks


def _as_float_array(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains {int(np.sum(~np.isfinite(arr)))} non-finite value(s) (nan/inf)")
    return arr


def _check_pair(pred: Any, gt: Any, ndims: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """float64 copies of ``pred`` and ``gt``; same shape, an allowed rank, every side >= the SSIM window."""
    p = _as_float_array(pred, "pred")
    g = _as_float_array(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"shape mismatch: pred has shape {p.shape}, gt has shape {g.shape}")
    if p.ndim not in ndims:
        allowed = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"expected {allowed} arrays, got shape {p.shape} ({p.ndim}-D)")
    if min(p.shape) < SSIM_WIN_SIZE:
        raise ValueError(
            f"every side must be >= {SSIM_WIN_SIZE} (the SSIM window), got shape {p.shape}"
        )
    return p, g


def _check_unit_range(x: np.ndarray, name: str) -> None:
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.0 - _UNIT_RANGE_TOL or hi > 1.0 + _UNIT_RANGE_TOL:
        raise ValueError(
            f"{name} must be a network-range image in [-1, 1], got values in [{lo:g}, {hi:g}]"
            " (HU volumes go to synthrad_metrics)"
        )


def _psnr(gt: np.ndarray, pred: np.ndarray, data_range: float) -> float:
    """skimage PSNR, 10 log10(data_range^2 / MSE); identical inputs give +inf (without a divide warning)."""
    with np.errstate(divide="ignore"):
        return float(peak_signal_noise_ratio(gt, pred, data_range=data_range))


def _ssim(gt: np.ndarray, pred: np.ndarray, data_range: float, full: bool = False):
    """skimage SSIM with the defaults pinned (uniform 7-window, K1 0.01, K2 0.03, sample covariance)."""
    return structural_similarity(
        gt, pred, win_size=SSIM_WIN_SIZE, data_range=data_range, gaussian_weights=False,
        use_sample_covariance=True, K1=SSIM_K1, K2=SSIM_K2, full=full,
    )


# ---------------------------------------------------------------------------------------------------------------
# paper style (MM2CT / SynDiff family)


def _to_unit_over_max(x: np.ndarray) -> np.ndarray:
    """[-1, 1] -> (x + 1) / 2 -> divided by its own max (SynDiff test.py); an all-zero image stays zeros."""
    x = (x + 1.0) / 2.0  # (H, W) in [0, 1]
    peak = x.max()
    return x / peak if peak > 0 else x


def paper_metrics(pred: Any, gt: Any) -> dict[str, float]:
    """Paper-style PSNR (dB) and SSIM (x 100) of one 2-D slice (``docs/method.md`` §8.5, Open choice 20).

    Convention, exactly:

    1. ``pred`` and ``gt`` are (H, W) images in the network range [-1, 1];
    2. each is mapped to [0, 1] by ``(x + 1) / 2`` and divided by **its own** maximum (SynDiff ``test.py``,
       §2.9), so both peak at exactly 1;
    3. ``psnr = skimage.metrics.peak_signal_noise_ratio(gt, pred, data_range=gt.max())`` (= 1), which equals
       SynDiff ``test.py``'s own ``20 log10(max(pred) / RMSE)`` because both peaks are 1;
    4. ``ssim = 100 * skimage.metrics.structural_similarity(gt, pred, data_range=gt.max())`` with a 7x7
       uniform window, K1 = 0.01, K2 = 0.03, sample covariance (skimage defaults, pinned here; the explicit
       data_range avoids skimage's inflated-SSIM pitfall, §2.9).

    No crop (SynDiff's ``CenterCrop((256, 152))`` fits brains, not the pelvis) and no mask: background counts.

    Edge cases:

    * ``gt`` with no signal (all -1, i.e. all zero after mapping): the peak is 0 and the metrics are undefined;
      both are ``nan`` and :func:`aggregate` skips the slice (SynDiff gets ``nan`` there as well and averages
      with ``np.nanmean``).
    * ``pred`` all -1 while ``gt`` has signal: ``pred`` is scored as the all-zero image (finite, poor scores).
      SynDiff would divide 0 by 0 and silently drop the slice, which rewards a collapsed generator.
    * ``pred == gt``: PSNR is ``inf`` (MSE 0) and SSIM is 100.

    Raises ``ValueError`` for a shape mismatch (both shapes in the message), non-2-D input, sides < 7,
    non-finite values, or values outside [-1.1, 1.1] (e.g. HU passed by mistake).
    """
    p, g = _check_pair(pred, gt, ndims=(2,))  # (H, W) each
    _check_unit_range(p, "pred")
    _check_unit_range(g, "gt")
    if (g.max() + 1.0) / 2.0 <= 0:  # no ground-truth signal: nothing to normalise by
        return {"psnr": math.nan, "ssim": math.nan}
    g01 = _to_unit_over_max(g)  # (H, W), max 1
    p01 = _to_unit_over_max(p)  # (H, W), max 1 (or all zeros)
    data_range = float(g01.max())  # = 1.0 exactly (x / x.max() at the argmax)
    return {
        "psnr": _psnr(g01, p01, data_range),
        "ssim": 100.0 * float(_ssim(g01, p01, data_range)),
    }


def syndiff_val_psnr(pred: Any, gt: Any) -> float:
    """SynDiff's per-epoch validation PSNR (``docs/method.md`` §2.7), for checkpoint selection (Open choice 19).

    Convention, exactly as SynDiff ``train.py``: both (H, W) images mapped ``(x + 1) / 2`` to [0, 1], each divided
    by **its own mean**, then ``skimage.metrics.peak_signal_noise_ratio(gt, pred, data_range=gt.max())``.
    Not comparable with :func:`paper_metrics` (max- vs mean-normalisation); use it only to rank checkpoints.

    Edge cases as :func:`paper_metrics`: ``gt`` with zero mean after mapping -> ``nan``; ``pred`` with zero mean
    is scored as the all-zero image; identical inputs -> ``inf``.  The same ``ValueError`` checks as
    :func:`paper_metrics` (including sides >= 7, so that both protocols accept exactly the same slices).
    """
    p, g = _check_pair(pred, gt, ndims=(2,))  # (H, W) each
    _check_unit_range(p, "pred")
    _check_unit_range(g, "gt")
    g01 = (g + 1.0) / 2.0
    p01 = (p + 1.0) / 2.0
    g_mean, p_mean = g01.mean(), p01.mean()
    if g_mean <= 0:
        return math.nan
    g01 = g01 / g_mean
    if p_mean > 0:
        p01 = p01 / p_mean
    return _psnr(g01, p01, float(g01.max()))


# ---------------------------------------------------------------------------------------------------------------
# SynthRAD style (HU, body mask)


def synthrad_metrics(pred_hu: Any, gt_hu: Any, mask: Any, *, version: int = 2023) -> dict[str, float]:
    """SynthRAD-style MAE (HU), PSNR (dB) and SSIM (0..1) inside a body mask (``docs/data.md`` §2.3).

    ``pred_hu``, ``gt_hu`` and ``mask`` share one shape: a 3-D volume (z, y, x), as the challenge scores it, or a
    2-D slice (y, x) for slice-wise use (SSIM is then the 2-D SSIM; the numbers differ from the volume ones).
    ``mask`` is binarised as ``mask > 0``.  With ``(lo, hi)`` the clipping window of ``version``:

    * **MAE** = mean of ``|gt - pred|`` over mask voxels, **unclipped** HU
      (SynthRAD ``sum(|gt*m - pred*m|) / sum(m)``).
    * **PSNR**: both clipped to ``[lo, hi]``, the mask voxels taken as 1-D vectors,
      ``skimage.metrics.peak_signal_noise_ratio(gt, pred, data_range=hi - lo)``; identical -> ``inf``.
    * **SSIM**: both clipped to ``[lo, hi]``, voxels outside the mask set to ``lo`` (-1024), shifted by ``-lo``
      (+1024, so 0..hi-lo), then ``skimage.metrics.structural_similarity(gt, pred, data_range=hi - lo,
      full=True)`` with skimage defaults (7-voxel uniform window, K1 0.01, K2 0.03, sample covariance); the score
      is the mean of the SSIM map over the mask after cropping 3 voxels off every border,
      ``crop(map, 3)[crop(mask, 3)].mean()``.  This follows github SynthRAD2023/metrics
      ``functions/image_metrics.py``, passing the binarised numpy mask where ``score_patient`` passes the
      SimpleITK object (a quirk noted in data.md).

    ``version=2023``: window [-1024, 3000], data range 4024 (SynthRAD2023).
    ``version=2025``: window [-1024, 3071], data range 4095, and gt/pred set to -1024 outside the mask before any
    metric (github SynthRAD2025/evaluation ``image_metrics.py``).  That fill does not change the in-mask MAE and
    PSNR; it is applied for fidelity.  SynthRAD2025 replaced SSIM by a masked 3-D MS-SSIM, which is **not
    implemented** here: with ``version=2025`` the ``ssim`` entry is the 2023 single-scale masked SSIM computed on
    the 2025 window, so it is not the 2025 challenge's image-similarity score.

    Differences from the official code: everything is computed in float64 (the challenge reads float32 with
    SimpleITK; values agree to ~1e-6 relative).  An empty mask gives ``nan`` for all three (the official code
    divides by zero), and a mask with no voxel left after the 3-voxel crop gives ``ssim = nan``.

    Raises ``ValueError`` for mismatched shapes (all shapes in the message), a rank other than 2 or 3, a side
    shorter than 7 (the SSIM window; e.g. a volume with fewer than 7 slices), non-finite values, or an unknown
    ``version``.
    """
    if version not in SYNTHRAD_RANGES:
        raise ValueError(f"version must be one of {sorted(SYNTHRAD_RANGES)}, got {version!r}")
    lo, hi = SYNTHRAD_RANGES[version]
    p, g = _check_pair(pred_hu, gt_hu, ndims=(2, 3))  # (z, y, x) or (y, x)
    m = np.asarray(mask)
    if m.shape != g.shape:
        raise ValueError(f"shape mismatch: mask has shape {m.shape}, pred and gt have shape {g.shape}")
    m = _as_float_array(m, "mask") > 0  # binarised like SynthRAD's np.where(mask > 0, 1, 0)
    if not m.any():
        return {"mae": math.nan, "psnr": math.nan, "ssim": math.nan}
    if version == 2025:
        g = np.where(m, g, lo)
        p = np.where(m, p, lo)

    mae = float(np.abs(g[m] - p[m]).mean())

    g_clip = np.clip(g, lo, hi)
    p_clip = np.clip(p, lo, hi)
    data_range = hi - lo
    psnr = _psnr(g_clip[m], p_clip[m], data_range)  # 1-D vectors of mask voxels

    g_ssim = np.where(m, g_clip, lo) - lo  # 0 .. data_range, background 0
    p_ssim = np.where(m, p_clip, lo) - lo
    _, ssim_map = _ssim(g_ssim, p_ssim, data_range, full=True)  # same shape as the input
    inner = crop(m, SSIM_CROP)
    ssim = float(crop(ssim_map, SSIM_CROP)[inner].mean(dtype=np.float64)) if inner.any() else math.nan
    return {"mae": mae, "psnr": psnr, "ssim": ssim}


# ---------------------------------------------------------------------------------------------------------------
# aggregation


def _metric_keys(rows: Sequence[Mapping[str, Any]], keys: Iterable[str] | None) -> list[str]:
    if keys is not None:
        keys = list(keys)
        if "patient" in keys:
            raise ValueError("keys must not include 'patient'")
        return keys
    # default: the float-valued entries of the first row (ints such as a slice index are left out)
    return [k for k, v in rows[0].items() if k != "patient" and isinstance(v, (float, np.floating))]


def per_patient_means(
    rows: Sequence[Mapping[str, Any]], keys: Iterable[str] | None = None
) -> dict[Any, dict[str, float]]:
    """``{patient: {metric: nan-mean over that patient's rows}}``, patients in order of first appearance.

    ``keys`` defaults to the float-valued entries of the first row other than ``"patient"``.  ``nan`` rows are
    skipped (a patient whose rows are all ``nan`` gets ``nan``); ``inf`` propagates.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("rows is empty: nothing to aggregate")
    metric_keys = _metric_keys(rows, keys)
    if not metric_keys:
        raise ValueError(f"no float-valued metric entries in the first row {dict(rows[0])!r}; pass keys=")
    grouped: dict[Any, list[Mapping[str, Any]]] = {}
    for i, row in enumerate(rows):
        missing = [k for k in ("patient", *metric_keys) if k not in row]
        if missing:
            raise ValueError(f"row {i} lacks {missing}: {dict(row)!r}")
        grouped.setdefault(row["patient"], []).append(row)
    return {
        patient: {k: _nanmean([float(r[k]) for r in prows]) for k in metric_keys}
        for patient, prows in grouped.items()
    }


def _nanmean(values: Sequence[float]) -> float:
    finite_or_inf = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite_or_inf)) if finite_or_inf else math.nan


def aggregate(
    rows: Sequence[Mapping[str, Any]], keys: Iterable[str] | None = None, ddof: int = 0
) -> dict[str, dict[str, float | int]]:
    """Summarise per-slice (or per-volume) metric rows (``docs/method.md`` §2.9, §8.5).

    ``rows`` are dicts such as ``{"patient": "P03", "slice": 41, "psnr": 27.1, "ssim": 90.2}``.  For each metric
    (``keys``, default: the float-valued entries of the first row other than ``"patient"``) it returns::

        {"slice_mean":   nan-mean over all rows (SynDiff test.py: np.nanmean over all test slices),
         "patient_mean": nan-mean of the per-patient means,
         "patient_std":  nan-std of the per-patient means (ddof=0 as SelfRDB's np.nanstd; ddof=1 for the
                         sample std), i.e. the spread ACROSS patients, not across slices (SynDiff issue #47),
         "n_slices":     rows with a non-nan value,
         "n_patients":   patients with a non-nan mean}

    ``nan`` values (unscoreable slices) are skipped everywhere; ``inf`` (a perfect PSNR) propagates into the
    means, as it would in SynDiff.  With one patient the std is 0 (ddof=0) or ``nan`` (ddof=1).
    Raises ``ValueError`` for empty input or rows lacking ``"patient"`` or a metric key.
    """
    rows = list(rows)
    patients = per_patient_means(rows, keys)
    metric_keys = list(next(iter(patients.values())))
    out: dict[str, dict[str, float | int]] = {}
    for k in metric_keys:
        slice_vals = [float(r[k]) for r in rows if not math.isnan(float(r[k]))]
        patient_vals = [v[k] for v in patients.values() if not math.isnan(v[k])]
        if len(patient_vals) > ddof:
            with np.errstate(invalid="ignore"):  # inf - inf in the std of infinite means -> nan
                std = float(np.std(patient_vals, ddof=ddof))
        else:
            std = math.nan
        out[k] = {
            "slice_mean": float(np.mean(slice_vals)) if slice_vals else math.nan,
            "patient_mean": float(np.mean(patient_vals)) if patient_vals else math.nan,
            "patient_std": std,
            "n_slices": len(slice_vals),
            "n_patients": len(patient_vals),
        }
    return out


# ----------------------------------------------------------------------------------------------- geometry, input use
BONE_HU = 200.0  # bone = CT above 200 HU inside the body mask (the phantom-sized stand-in for SynthRAD 2025's
                 # segmentation-based geometry metrics, docs/data.md §2.3)


def _check_masked(pred_hu: Any, gt_hu: Any, mask: Any, *others: tuple[str, Any]) -> tuple[np.ndarray, ...]:
    """float64 copies of HU arrays of one shape (any rank, finite) and the binarised mask (``mask > 0``)."""
    arrays = [_as_float_array(pred_hu, "pred_hu"), _as_float_array(gt_hu, "gt_hu")]
    arrays += [_as_float_array(x, name) for name, x in others]
    m = _as_float_array(mask, "mask")
    shapes = {a.shape for a in (*arrays, m)}
    if len(shapes) > 1:
        raise ValueError(f"shape mismatch: pred_hu {arrays[0].shape}, gt_hu {arrays[1].shape}, "
                         + "".join(f"{name} {a.shape}, " for (name, _), a in zip(others, arrays[2:]))
                         + f"mask {m.shape}")
    return (*arrays, m > 0)


def bone_dice(pred_hu: Any, gt_hu: Any, mask: Any, threshold: float = BONE_HU) -> float:
    """Dice overlap of bone in the synthetic and the true CT: ``2 |P ∩ G| / (|P| + |G|)`` with
    ``P = (pred_hu > threshold) & mask`` and ``G = (gt_hu > threshold) & mask`` (``mask > 0``: the body mask), over
    every voxel of the arrays (a patient's volume, or one slice). 1 is a perfect bone geometry, 0 no overlap (a
    prediction without any bone where the truth has some). No bone in either image leaves Dice undefined: ``nan``,
    which the across-patient means skip. Raises ``ValueError`` for shapes that differ or non-finite values."""
    p, g, m = _check_masked(pred_hu, gt_hu, mask)
    pb, gb = (p > threshold) & m, (g > threshold) & m
    denom = int(pb.sum()) + int(gb.sum())
    return 2.0 * float((pb & gb).sum()) / denom if denom else math.nan


def input_usage(pred_hu: Any, gt_hu: Any, template_hu: Any, mask: Any) -> float:
    """How much of the patient-specific anatomy a prediction carries: the Pearson r, over the body-mask voxels,
    between ``pred - template`` and ``gt - template``, where ``template`` is what a model that ignores its input
    would output (the mean training CT, ``mm2ct.template``). 1: the prediction departs from the template exactly
    where and as the truth does; 0: it does not follow the truth at all, and also by definition when it does not
    depart from the template (the template itself, or the template plus a constant: no slice-specific part).
    ``nan`` when the truth equals the template up to a constant in the mask, or the mask is empty."""
    p, g, t, m = _check_masked(pred_hu, gt_hu, mask, ("template_hu", template_hu))
    if not m.any():
        return math.nan
    a, b = (p - t)[m], (g - t)[m]   # (N,) each: the slice-specific parts
    a, b = a - a.mean(), b - b.mean()
    na, nb = float(np.sqrt((a * a).sum())), float(np.sqrt((b * b).sum()))
    if nb == 0.0:
        return math.nan
    if na == 0.0:
        return 0.0
    return float((a * b).sum() / (na * nb))


# ----------------------------------------------------------------------------------------------- fused image
def fused_stats(pred: Mapping[str, np.ndarray]) -> dict[str, float]:
    """How much of the MR the fused image Φ(T1, T2) carries, over all pixels of the evaluated slices:
    ``fused_std`` (its spread; a near-constant Φ leaves the generators that read it almost unconditioned) and
    ``fused_corr_t1`` / ``fused_corr_t2`` (Pearson r with each source). ``pred``: arrays "fused", "t1", "t2" of one
    shape, in the network's [-1, 1] range."""
    f = np.asarray(pred["fused"], dtype=np.float64).ravel()
    out = {"fused_std": float(f.std())}
    for k in ("t1", "t2"):
        x = np.asarray(pred[k], dtype=np.float64).ravel()
        ok = f.std() > 0 and x.std() > 0
        out[f"fused_corr_{k}"] = float(np.corrcoef(f, x)[0, 1]) if ok else float("nan")
    return out
