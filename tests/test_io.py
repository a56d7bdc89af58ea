"""NIfTI/DICOM I/O (docs/data.md §5): round trips, orientation, atomic writes, DICOM ordering, clear errors."""
from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from mm2ct.data.io import (DataError, check_hu, read_dicom_series, read_nifti, write_dicom_series, write_like,
                           write_nifti)


def _ras_affine(spacing=(1.5, 1.5, 3.0), origin=(-20.0, -10.0, 5.0)):
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = origin
    return aff


def test_nifti_round_trip_keeps_int16_hu_affine_and_header(tmp_path):
    rng = np.random.default_rng(0)
    ct = rng.integers(-1024, 3072, size=(7, 6, 5)).astype(np.int16)
    aff = _ras_affine()
    path = write_nifti(tmp_path / "ct.nii.gz", ct, aff, descrip="test CT")
    img = nib.load(str(path))
    assert img.get_data_dtype() == np.int16                     # int16 on disk, no scaling
    assert np.array_equal(np.asanyarray(img.dataobj), ct)
    assert img.header.get_sform(coded=True)[1] == 1 and img.header.get_qform(coded=True)[1] == 1
    vol = read_nifti(path)
    assert vol.data.dtype == np.float32 and np.array_equal(vol.data, ct.astype(np.float32))
    assert np.allclose(vol.affine, aff) and np.allclose(vol.spacing, [1.5, 1.5, 3.0])
    assert vol.header["descrip"].tobytes().startswith(b"test CT")
    assert [p.name for p in tmp_path.iterdir()] == ["ct.nii.gz"]   # no temporary file left


def test_read_reorients_to_ras_and_write_like_restores_the_native_grid(tmp_path):
    data = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2) + 1
    lps = np.diag([-2.0, -2.0, 4.0, 1.0])                      # stored L-P-S (x, y flipped)
    lps[:3, 3] = [30.0, 20.0, -8.0]
    write_nifti(tmp_path / "lps.nii.gz", data, lps)
    vol = read_nifti(tmp_path / "lps.nii.gz")
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    assert np.array_equal(vol.data, data[::-1, ::-1, :])
    for idx in [(0, 0, 0), (3, 2, 1), (1, 2, 0)]:              # every voxel keeps its world position
        native = lps @ [*idx, 1]
        canon = vol.affine @ [3 - idx[0], 2 - idx[1], idx[2], 1]
        assert np.allclose(native, canon)
    write_like(tmp_path / "back.nii.gz", vol.data * 2, vol)
    back = nib.load(str(tmp_path / "back.nii.gz"))
    assert np.allclose(back.affine, lps) and np.array_equal(back.get_fdata(), data * 2)


def test_write_is_atomic_when_saving_fails(tmp_path, monkeypatch):
    def broken_save(img, filename):
        open(filename, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_nifti(tmp_path / "ct.nii.gz", np.zeros((2, 2, 2), np.int16), np.eye(4))
    assert list(tmp_path.iterdir()) == []                       # neither the target nor a temporary file


@pytest.mark.parametrize("make, problem", [
    (lambda p: p.write_text("hello"), "not a readable NIfTI"),
    (lambda p: None, "file not found"),
])
def test_bad_files_name_the_file(tmp_path, make, problem):
    path = tmp_path / "t2.nii.gz"
    make(path)
    with pytest.raises(DataError, match=problem) as e:
        read_nifti(path)
    assert str(path) in str(e.value)


def test_truncated_gzip_is_a_clear_error(tmp_path):
    path = write_nifti(tmp_path / "t1.nii.gz", np.random.default_rng(0).random((32, 32, 16), np.float32), np.eye(4))
    raw = path.read_bytes()
    assert gzip.decompress(raw)                                  # a valid file first
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="truncated or corrupt") as e:
        read_nifti(path)
    assert e.value.path == path


@pytest.mark.parametrize("data, problem", [
    (np.full((3, 3, 3), np.nan, np.float32), "NaN/Inf"),
    (np.r_[np.ones(26), np.inf].reshape(3, 3, 3).astype(np.float32), "1 NaN/Inf"),
    (np.full((3, 3, 3), 7.0, np.float32), "constant volume"),
    (np.random.default_rng(0).random((3, 3, 3, 2)).astype(np.float32), "expected a 3-D volume"),
])
def test_bad_values_and_shapes(tmp_path, data, problem):
    path = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    with pytest.raises(DataError, match=problem):
        read_nifti(path)


def test_ct_must_be_in_hounsfield_units():
    body = np.full((8, 8, 2), -1000.0)
    body[2:6, 2:6] = 40.0
    check_hu(body, "ct.nii.gz")                                 # fine
    with pytest.raises(DataError, match="rescale intercept not applied"):
        check_hu(body + 1024, "ct.nii.gz")                      # stored values 0..4095
    with pytest.raises(DataError, match="Hounsfield"):
        check_hu((body + 1024) / 4095, "ct.nii.gz")             # already normalised to [0, 1]
    check_hu(np.where(body < 0, -3024.0, body), "ct.nii.gz")    # scanner padding outside the FOV is fine


# ------------------------------------------------------------------------------------------------------ DICOM

def test_pydicom_ct_small_gives_hu_and_ras_geometry():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    vol = read_dicom_series([path])
    assert vol.data.shape == (128, 128, 1)
    assert vol.data.min() == -896 and vol.data.max() == 1167   # stored int16 + RescaleIntercept -1024
    native = vol.to_native(vol.data)[:, :, 0].T                 # back to (rows, columns)
    assert np.array_equal(native, ds.pixel_array.astype(np.float32) - 1024)
    ipp = np.asarray(ds.ImagePositionPatient, float)
    assert np.allclose(vol.native_affine @ [0, 0, 0, 1], [-ipp[0], -ipp[1], ipp[2], 1])   # LPS -> RAS
    assert np.allclose(vol.spacing, [0.661468, 0.661468, 5.0])
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")


def test_pydicom_mr_small_has_no_rescale():
    path = get_testdata_file("MR_small.dcm")
    vol = read_dicom_series([path])
    assert vol.data.shape == (64, 64, 1)
    assert (vol.data.min(), vol.data.max()) == (127, 2145)
    assert np.allclose(vol.spacing, [0.3125, 0.3125, 0.8])


@pytest.mark.parametrize("reverse_files, z_step", [(False, 3.0), (True, 3.0), (False, -3.0), (True, -3.0)])
def test_series_sorted_by_position_not_file_name(tmp_path, reverse_files, z_step):
    rng = np.random.default_rng(1)
    hu = rng.integers(-1024, 2000, size=(6, 5, 4)).astype(np.float32)
    aff = np.diag([0.8, 0.9, z_step, 1.0])
    aff[:3, 3] = [-2.0, -2.0, 30.0]
    files = write_dicom_series(tmp_path, hu, aff, "CT", "CTtoMR", reverse_files=reverse_files)
    shuffled = [files[i] for i in rng.permutation(len(files))]
    vol = read_dicom_series(shuffled)
    expect = hu if z_step > 0 else hu[:, :, ::-1]               # canonical: slices run inferior -> superior
    assert np.array_equal(vol.data, expect)
    assert np.allclose(vol.affine[:3, :3], np.diag([0.8, 0.9, abs(z_step)]))
    assert np.allclose(vol.affine @ [0, 0, 0, 1], aff @ [0, 0, 0 if z_step > 0 else 3, 1])


def test_series_errors(tmp_path):
    hu = np.random.default_rng(2).integers(-1000, 1000, size=(4, 4, 5)).astype(np.float32)
    files = write_dicom_series(tmp_path / "a", hu, np.eye(4), "CT", "CT")
    with pytest.raises(DataError, match="same position"):
        read_dicom_series(files + write_dicom_series(tmp_path / "b", hu, np.eye(4), "CT", "CT"))
    with pytest.raises(DataError, match="uneven slice spacing"):
        read_dicom_series(files[:2] + files[3:])                 # a missing slice
    bad = tmp_path / "a" / "IM.99.dcm"
    bad.write_text("not dicom")
    with pytest.raises(DataError, match="not a readable DICOM") as e:
        read_dicom_series(files + [bad])
    assert e.value.path == bad
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "a").iterdir())
    assert os.path.getsize(files[0]) > 128
