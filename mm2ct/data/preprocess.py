"""Preprocessing with exact inverses: grids, HU window, MR normalisation, slice geometry (``docs/data.md`` §1.5, §5).

* ``resample_to_grid``: affine-aware resampling of a volume onto a reference grid (T1 -> T2, data.md §1.3, §5);
  anti-aliased when the target grid is coarser.
* ``hu_to_unit`` / ``unit_to_hu``: the CT window [hu_min, hu_max] <-> [-1, 1]; exact inverse inside the window.
* ``IntensityNormaliser``: SynDiff's recipe (volume mean -> 1, global max over training volumes -> 1, then
  [-1, 1]; data.md §1.5, method.md §1.3), a robust variant (a percentile inside the body mask -> 1), or the HU
  window; ``apply`` and ``inverse`` are exact inverses given the per-volume scale.
* ``SliceGeometry``: axial slices of a (X, Y, Z) volume <-> image_size x image_size model slices (method.md open
  choice 2: zero-pad symmetrically; an in-plane grid larger than image_size is first resampled down so that its
  larger side fits, keeping the aspect ratio).  Slices are shown radiologically: rows run anterior -> posterior,
  columns patient right -> left.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage


# --------------------------------------------------------------------------------------------------- grids

def resample_to_grid(data: np.ndarray, affine: np.ndarray, shape: tuple[int, int, int], ref_affine: np.ndarray,
                     order: int = 1, cval: float = 0.0, antialias: bool = True) -> np.ndarray:
    """Resample ``data`` (on ``affine``) onto the grid (``shape``, ``ref_affine``); float32 (X, Y, Z).

    Points outside the source take ``cval`` (use -1024 for CT, 0 for MR and masks).  When the target grid is
    coarser along a source axis the source is Gaussian-filtered first (sigma = (factor - 1) / 2 voxels).
    An identical grid returns an exact copy.
    """
    data = np.asarray(data, np.float32)
    shape = tuple(int(n) for n in shape)
    if data.shape == shape and np.allclose(affine, ref_affine, atol=1e-5):
        return data.copy()
    m = np.linalg.inv(affine) @ ref_affine                  # reference voxel -> source voxel
    if antialias and order > 0:
        factor = np.abs(m[:3, :3]).max(axis=1)              # source voxels per reference voxel, per source axis
        sigma = np.maximum(0.0, (factor - 1.0) / 2.0)
        if sigma.max() > 0.05:
            data = ndimage.gaussian_filter(data, sigma)
    out = np.empty(shape, np.float32)
    ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    for k in range(shape[2]):                               # slice by slice: bounded memory
        pts = m[:3, 0, None, None] * ii + m[:3, 1, None, None] * jj + (m[:3, 2] * k + m[:3, 3])[:, None, None]
        out[:, :, k] = ndimage.map_coordinates(data, pts, order=order, mode="constant", cval=cval)
    return out


def overlap_fraction(shape, affine, ref_shape, ref_affine) -> float:
    """Fraction of the reference grid's voxel centres that fall inside the source grid (coarse, every 4th voxel)."""
    m = np.linalg.inv(affine) @ ref_affine
    idx = np.stack(np.meshgrid(*(np.arange(0, n, 4) for n in ref_shape), indexing="ij"), 0).reshape(3, -1)
    src = m[:3, :3] @ idx + m[:3, 3:4]
    inside = np.all((src > -0.5) & (src < np.asarray(shape)[:, None] - 0.5), axis=0)
    return float(inside.mean())


# ---------------------------------------------------------------------------------------------- body masks

def _largest_component_filled(mask: np.ndarray, dilate: int) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask.astype(np.uint8)
    sizes = ndimage.sum_labels(mask, lab, index=np.arange(1, n + 1))
    body = lab == (int(np.argmax(sizes)) + 1)
    for k in range(body.shape[2]):                          # fill holes (gas, lungs) slice by slice
        body[:, :, k] = ndimage.binary_fill_holes(body[:, :, k])
    if dilate:
        body = ndimage.binary_dilation(body, np.ones((3, 3, 1), bool), iterations=dilate)
    return body.astype(np.uint8)


def body_mask_from_ct(hu: np.ndarray, threshold: float = -500.0, dilate: int = 2) -> np.ndarray:
    """Body = largest connected component above ``threshold`` HU, holes filled per slice, dilated (data.md §4.5)."""
    return _largest_component_filled(np.asarray(hu) > threshold, dilate)


def body_mask_from_mr(vol: np.ndarray, dilate: int = 2) -> np.ndarray:
    """Body from an MR volume: Otsu threshold, largest component, holes filled per slice, dilated."""
    from skimage.filters import threshold_otsu

    v = np.asarray(vol, np.float32)
    return _largest_component_filled(v > threshold_otsu(v.ravel()), dilate)


# ---------------------------------------------------------------------------------------------- intensities

def hu_to_unit(hu, cfg_data):
    """CT HU -> [-1, 1]: clip to [hu_min, hu_max] (config ``data``) and map linearly; works on numpy and torch."""
    lo, hi = float(cfg_data.hu_min), float(cfg_data.hu_max)
    clipped = hu.clip(lo, hi) if hasattr(hu, "clip") else min(max(hu, lo), hi)
    return (clipped - lo) * (2.0 / (hi - lo)) - 1.0


def unit_to_hu(x, cfg_data):
    """[-1, 1] -> HU, the exact inverse of ``hu_to_unit`` inside the window (values outside [-1, 1] extrapolate)."""
    lo, hi = float(cfg_data.hu_min), float(cfg_data.hu_max)
    return (x + 1.0) * ((hi - lo) / 2.0) + lo


@dataclass
class IntensityNormaliser:
    """Volume intensities <-> [-1, 1] with an exact inverse given the per-volume ``scale``.

    ``method``:
      * ``syndiff``: y = (clip(v, lower, upper) - lower) / (volume mean of that * global_max); x = 2 y - 1
        (data.md §1.5; for CT, ``lower``/``upper`` = the HU window as in method.md open choice 3);
      * ``robust``: like syndiff but the per-volume scale is the ``percentile`` of the body-mask voxels
        (global_max stays 1, so the percentile maps to +1);
      * ``window``: CT only, ``hu_to_unit`` (no per-volume scale).
    Fit ``global_max`` on training volumes with ``fit([volume_max(v, scale(v)) ...])``; ``scale(vol, mask)`` gives a
    volume's scale, also for a new patient at inference.  ``inverse(apply(v, s), s) == v`` for v in [lower, upper].
    """
    method: str = "syndiff"
    lower: float = 0.0
    upper: float = math.inf
    global_max: float = 1.0
    percentile: float = 99.5

    def __post_init__(self):
        if self.method not in ("syndiff", "robust", "window"):
            raise ValueError(f"unknown normalisation {self.method!r}: choose syndiff, robust or window")

    def scale(self, vol: np.ndarray, mask: np.ndarray | None = None) -> float:
        """The per-volume constant: mean (syndiff) or a body-mask percentile (robust) of the shifted volume."""
        if self.method == "window":
            return 1.0
        v = np.clip(np.asarray(vol, np.float64), self.lower, self.upper) - self.lower
        if self.method == "syndiff":
            s = float(v.mean())
        else:
            if mask is None:
                mask = body_mask_from_mr(vol)
            s = float(np.percentile(v[np.asarray(mask) > 0], self.percentile))
        if not s > 0:
            raise ValueError(f"cannot normalise a volume whose {self.method} scale is {s}")
        return s

    def apply(self, vol: np.ndarray, scale: float) -> np.ndarray:
        """Volume -> [-1, 1] (float32); values above the training maximum map above 1."""
        v = np.asarray(vol, np.float32)
        if self.method == "window":
            return ((np.clip(v, self.lower, self.upper) - self.lower) * (2.0 / (self.upper - self.lower))
                    - 1.0).astype(np.float32)
        y = (np.clip(v, self.lower, self.upper) - self.lower) / np.float32(scale * self.global_max)
        return (2.0 * y - 1.0).astype(np.float32)

    def inverse(self, x: np.ndarray, scale: float) -> np.ndarray:
        """[-1, 1] -> volume intensities (float32), the exact inverse of ``apply`` with the same scale."""
        x = np.asarray(x, np.float32)
        if self.method == "window":
            return ((x + 1.0) * ((self.upper - self.lower) / 2.0) + self.lower).astype(np.float32)
        return ((x + 1.0) * np.float32(0.5 * scale * self.global_max) + self.lower).astype(np.float32)

    def volume_max(self, vol: np.ndarray, scale: float) -> float:
        """max(clip(v) - lower) / scale: what SynDiff's global maximum is taken over."""
        return float((np.clip(np.asarray(vol), self.lower, self.upper) - self.lower).max()) / scale

    def fit(self, volume_maxima: list[float]) -> "IntensityNormaliser":
        """syndiff: ``global_max`` = the largest ``volume_max`` of the training volumes (others: unchanged)."""
        if self.method == "syndiff":
            if not volume_maxima:
                raise ValueError("no training volume to fit the global maximum on")
            self.global_max = max(volume_maxima)
        return self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["upper"] = None if math.isinf(self.upper) else self.upper
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "IntensityNormaliser":
        d = dict(d)
        d["upper"] = math.inf if d.get("upper") is None else d["upper"]
        return cls(**d)

    @classmethod
    def for_mr(cls, cfg_data) -> "IntensityNormaliser":
        """MR normaliser of the config (``data.mr_norm``: syndiff | robust)."""
        return cls(cfg_data.mr_norm, 0.0, math.inf, 1.0, cfg_data.mr_percentile)

    @classmethod
    def for_ct(cls, cfg_data) -> "IntensityNormaliser":
        """CT normaliser of the config (``data.ct_norm``: window | syndiff, clipped to [hu_min, hu_max])."""
        return cls(cfg_data.ct_norm, float(cfg_data.hu_min), float(cfg_data.hu_max))


def case_normalisers(cfg_data, case) -> dict[str, dict]:
    """The normalisers a checkpoint stores (``IntensityNormaliser.to_dict`` for ``t1``, ``t2`` and ``ct``), fitted on
    one case (``.t1``, ``.t2``, ``.mask``) instead of a training set: for checkpoints made without a slice cache (the
    GPU check's, the tests')."""
    out = {}
    for key in ("t1", "t2"):
        n = IntensityNormaliser.for_mr(cfg_data)
        vol = getattr(case, key)
        out[key] = n.fit([n.volume_max(vol, n.scale(vol, case.mask))]).to_dict()
    out["ct"] = IntensityNormaliser.for_ct(cfg_data).to_dict()
    return out


# ----------------------------------------------------------------------------------------------- slice geometry

@dataclass(frozen=True)
class SliceGeometry:
    """How the axial slices of a (X, Y, Z) volume map to (Z, S, S) model slices and back (method.md open choice 2).

    In-plane sizes up to ``image_size`` are zero-padded symmetrically (SynDiff's loader); larger grids are first
    resampled by ``zoom`` = image_size / max(X, Y) (anti-aliased, field of view kept) and then padded.
    """
    shape: tuple[int, int, int]
    image_size: int

    @property
    def zoom(self) -> float:
        return min(1.0, self.image_size / max(self.shape[0], self.shape[1]))

    @property
    def resized(self) -> tuple[int, int]:
        """In-plane size after the zoom, before padding."""
        if self.zoom == 1.0:
            return self.shape[0], self.shape[1]
        return tuple(min(self.image_size, max(1, round(n * self.zoom))) for n in self.shape[:2])

    @property
    def pad(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """(before, after) zero padding along X and Y."""
        return tuple(((self.image_size - n) // 2, self.image_size - n - (self.image_size - n) // 2)
                     for n in self.resized)

    def _resize(self, vol: np.ndarray, size: tuple[int, int], order: int, antialias: bool) -> np.ndarray:
        """In-plane resampling aligning the field-of-view edges (pixel-area convention)."""
        n = vol.shape[:2]
        if tuple(n) == tuple(size):
            return vol
        f = [s / m for s, m in zip(size, n)]
        if antialias and min(f) < 1:
            vol = ndimage.gaussian_filter(vol, [max(0.0, (1 / f[0] - 1) / 2), max(0.0, (1 / f[1] - 1) / 2), 0])
        x = (np.arange(size[0]) + 0.5) / f[0] - 0.5
        y = (np.arange(size[1]) + 0.5) / f[1] - 0.5
        out = np.empty((*size, vol.shape[2]), np.float32)
        xx, yy = np.meshgrid(x, y, indexing="ij")
        for k in range(vol.shape[2]):
            out[:, :, k] = ndimage.map_coordinates(vol[:, :, k], [xx, yy], order=order, mode="nearest")
        return out

    def to_slices(self, vol: np.ndarray, cval: float = 0.0, order: int = 1) -> np.ndarray:
        """(X, Y, Z') volume (any number of slices) -> (Z', S, S) float32, radiological view (rows A -> P,
        columns R -> L)."""
        vol = np.asarray(vol, np.float32)
        if vol.ndim != 3 or vol.shape[:2] != tuple(self.shape[:2]):
            raise ValueError(f"volume shape {vol.shape} does not match the in-plane geometry {self.shape[:2]}")
        v = self._resize(vol, self.resized, order, antialias=order > 0)
        (a0, a1), (b0, b1) = self.pad
        v = np.pad(v, ((a0, a1), (b0, b1), (0, 0)), constant_values=cval)
        return np.ascontiguousarray(v[::-1, ::-1, :].transpose(2, 1, 0))

    def from_slices(self, slices: np.ndarray, order: int = 1) -> np.ndarray:
        """(Z', S, S) slices -> (X, Y, Z') float32 on the source in-plane grid (inverse of ``to_slices``)."""
        s = np.asarray(slices, np.float32)
        if s.ndim != 3 or s.shape[1:] != (self.image_size, self.image_size):
            raise ValueError(f"slices of shape {s.shape}, expected (Z, {self.image_size}, {self.image_size})")
        v = s.transpose(2, 1, 0)[::-1, ::-1, :]
        (a0, _), (b0, _) = self.pad
        n = self.resized
        v = np.ascontiguousarray(v[a0:a0 + n[0], b0:b0 + n[1], :])
        return self._resize(v, self.shape[:2], order, antialias=False)

    def to_dict(self) -> dict[str, Any]:
        return dict(shape=list(self.shape), image_size=self.image_size, zoom=self.zoom)
