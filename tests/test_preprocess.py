"""Preprocessing (docs/data.md §1.5, §5; method.md open choices 2-3): exact inverses, resampling, slice geometry."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mm2ct.config import DataConfig
from mm2ct.data.preprocess import (IntensityNormaliser, SliceGeometry, body_mask_from_ct, body_mask_from_mr,
                                   hu_to_unit, overlap_fraction, resample_to_grid, unit_to_hu)


def test_hu_window_known_values_and_exact_round_trip():
    cfg = DataConfig()
    assert hu_to_unit(np.float64(-1024), cfg) == -1.0 and hu_to_unit(np.float64(3071), cfg) == 1.0
    assert hu_to_unit(np.array([-5000.0, 1023.5, 9000.0]), cfg).tolist() == [-1.0, 0.0, 1.0]
    hu = np.arange(-1024, 3072, dtype=np.int16)                 # every int16 HU of the window
    x = hu_to_unit(hu.astype(np.float32), cfg)
    assert x.dtype == np.float32 and x.min() == -1 and x.max() == 1
    assert np.array_equal(np.rint(unit_to_hu(x, cfg)).astype(np.int16), hu)
    assert np.abs(unit_to_hu(x.astype(np.float64), cfg) - hu).max() < 1e-3
    u = torch.linspace(-1, 1, 11)
    assert torch.allclose(hu_to_unit(unit_to_hu(u, cfg), cfg), u, atol=1e-6)   # torch tensors too


@pytest.mark.parametrize("method", ["syndiff", "robust"])
def test_mr_normaliser_exact_inverse_and_fit(method):
    rng = np.random.default_rng(0)
    vols = [rng.gamma(2.0, 100.0 * (i + 1), (10, 10, 4)).astype(np.float32) for i in range(3)]
    masks = [np.ones(v.shape, np.uint8) for v in vols]
    norm = IntensityNormaliser(method, percentile=99.0)
    scales = [norm.scale(v, m) for v, m in zip(vols, masks)]
    if method == "syndiff":
        assert scales[1] == pytest.approx(float(vols[1].astype(np.float64).mean()))
    else:
        assert scales[1] == pytest.approx(float(np.percentile(vols[1], 99.0)))
    norm.fit([norm.volume_max(v, s) for v, s in zip(vols, scales)])
    outs = [norm.apply(v, s) for v, s in zip(vols, scales)]
    assert min(float(o.min()) for o in outs) >= -1.0
    if method == "syndiff":
        assert max(float(o.max()) for o in outs) == pytest.approx(1.0)   # global max over training volumes -> 1
    for v, s, o in zip(vols, scales, outs):
        assert np.allclose(norm.inverse(o, s), v, rtol=1e-5, atol=1e-3)
    back = IntensityNormaliser.from_dict(norm.to_dict())
    assert back == norm and math.isinf(back.upper)


def test_ct_normalisers_window_and_syndiff():
    cfg = DataConfig()
    hu = np.linspace(-1024, 3071, 50, dtype=np.float32).reshape(5, 5, 2)
    win = IntensityNormaliser.for_ct(cfg)
    assert np.allclose(win.apply(hu, 1.0), hu_to_unit(hu, cfg))
    syn = IntensityNormaliser.for_ct(DataConfig(ct_norm="syndiff"))   # method.md open choice 3: shift, clip, recipe
    s = syn.scale(hu)
    assert s == pytest.approx(float((hu + 1024).mean()), rel=1e-5)
    syn.fit([syn.volume_max(hu, s)])
    x = syn.apply(hu, s)
    assert x.min() == pytest.approx(-1.0) and x.max() == pytest.approx(1.0)
    assert np.allclose(syn.inverse(x, s), hu, atol=1e-3)
    with pytest.raises(ValueError, match="unknown normalisation"):
        IntensityNormaliser("zscore")


def test_resample_identity_shift_rotation_and_outside():
    rng = np.random.default_rng(0)
    data = rng.random((8, 7, 6)).astype(np.float32)
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    out = resample_to_grid(data, aff, data.shape, aff)
    assert np.array_equal(out, data) and out is not data
    shifted = aff.copy()
    shifted[:3, 3] = [4.0, 0.0, 3.0]                            # reference starts 2 voxels in x, 1 in z later
    out = resample_to_grid(data, aff, (6, 7, 5), shifted, cval=-7.0)
    assert np.allclose(out[:, :, :], data[2:8, :, 1:6])
    out = resample_to_grid(data, aff, (8, 7, 6), shifted, cval=-7.0)
    assert np.all(out[6:] == -7.0) and np.all(out[:, :, 5] == -7.0)   # outside the source -> cval
    rot = aff @ np.array([[0, 1, 0, 0], [-1, 0, 0, 6], [0, 0, 1, 0], [0, 0, 0, 1]], float)  # 90 deg about z
    out = resample_to_grid(data, aff, (7, 8, 6), rot)
    assert np.allclose(out, np.rot90(data, k=1, axes=(0, 1)), atol=1e-6)


def test_resample_downsampling_of_a_ramp_is_antialiased_and_unbiased():
    x = np.arange(16, dtype=np.float32)
    data = np.broadcast_to(x[:, None, None], (16, 4, 4)).copy()
    aff = np.eye(4)
    ref = np.diag([2.0, 1.0, 1.0, 1.0])
    ref[0, 3] = 0.5                                             # 2 mm voxels centred between source voxels
    out = resample_to_grid(data, aff, (8, 4, 4), ref)
    assert np.allclose(out[1:-1, 1, 1], 2 * np.arange(1, 7) + 0.5, atol=1e-4)
    assert overlap_fraction((16, 4, 4), aff, (8, 4, 4), ref) == 1.0
    far = ref.copy()
    far[0, 3] = 1000.0
    assert overlap_fraction((16, 4, 4), aff, (8, 4, 4), far) == 0.0


def test_slice_geometry_pad_round_trip_and_radiological_view():
    vol = np.zeros((20, 14, 3), np.float32)
    vol[19, 7, 1] = 5.0          # patient's far right
    vol[10, 13, 2] = 9.0         # most anterior
    g = SliceGeometry(vol.shape, 32)
    assert g.zoom == 1.0 and g.pad == ((6, 6), (9, 9))
    s = g.to_slices(vol, cval=-1.0)                             # (Z, S, S)
    assert s.shape == (3, 32, 32) and s[0, 0, 0] == -1.0
    r, c = np.argwhere(s[1] == 5.0)[0]
    assert c == 6                                               # patient right on the image left
    r, c = np.argwhere(s[2] == 9.0)[0]
    assert r == 9                                               # anterior at the top
    assert np.array_equal(g.from_slices(s), vol)                # exact inverse
    assert np.array_equal(g.from_slices(s[1:2]), vol[:, :, 1:2])


def test_slice_geometry_resamples_larger_grids_to_fit():
    xx, yy = np.meshgrid(np.linspace(0, 1, 64), np.linspace(0, 1, 48), indexing="ij")
    vol = np.stack([np.sin(3 * xx) + yy, np.cos(2 * yy) * xx], -1).astype(np.float32)   # smooth (64, 48, 2)
    g = SliceGeometry(vol.shape, 32)
    assert g.zoom == 0.5 and g.resized == (32, 24) and g.pad == ((0, 0), (4, 4))
    s = g.to_slices(vol, cval=0.0)
    assert s.shape == (2, 32, 32)
    back = g.from_slices(s)
    assert back.shape == vol.shape
    assert np.abs(back - vol)[4:-4, 4:-4].max() < 0.03          # smooth content survives down-up sampling
    with pytest.raises(ValueError, match="in-plane geometry"):
        g.to_slices(vol[:60])


def test_body_masks_fill_holes_and_pick_the_body():
    hu = np.full((40, 40, 3), -1000.0, np.float32)
    yy, xx = np.mgrid[:40, :40]
    disc = (xx - 20) ** 2 + (yy - 20) ** 2 < 12 ** 2
    hu[disc] = 40.0
    hu[18:22, 18:22] = -950.0                                   # rectal gas inside the body
    hu[0:2, 0:40] = 200.0                                       # a couch, separate from the body
    m = body_mask_from_ct(hu, dilate=0)
    assert m.dtype == np.uint8 and m[20, 20, 1] == 1 and m[0, 5, 1] == 0
    assert m[:, :, 0].sum() == disc.sum()
    mr = np.where(hu > -500, 300.0, 0.0).astype(np.float32) + np.random.default_rng(0).random(hu.shape) * 5
    assert body_mask_from_mr(mr, dilate=2)[20, 33, 0] == 1       # dilated beyond the disc edge (r = 12)
