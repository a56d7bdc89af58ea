"""Dataset layouts (docs/data.md §1, §2, §5): detection, loading onto the T2 grid, Gold Atlas DICOM, clear errors."""
from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest

from mm2ct.data import phantom
from mm2ct.data.io import DataError, read_nifti, write_dicom_series, write_nifti
from mm2ct.data.sources import (detect_layout, ensure_dataset, list_patients, load_patient, patient_from_files,
                                read_syndiff_mat, write_syndiff_mat)
from mm2ct.workspace import resolve


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    return phantom.generate_dataset(tmp_path_factory.mktemp("data") / "phantom", 2, seed=20, grid="tiny",
                                    n_slices=6, t1_grid="own", progress=False)


@pytest.fixture
def nifti_dir(phantom_dir, tmp_path):
    """The generic layout: the phantom's patient folders without the manifest and labels."""
    out = tmp_path / "nifti"
    for pid in ("phantom_000", "phantom_001"):
        shutil.copytree(phantom_dir / pid, out / pid)
        (out / pid / "labels.nii.gz").unlink()
    return out


def test_layout_detection_and_mismatch_errors(phantom_dir, nifti_dir, tmp_path):
    assert detect_layout(phantom_dir) == "phantom"
    assert detect_layout(phantom_dir, "nifti") == "nifti"        # a phantom folder is also a generic one
    assert detect_layout(nifti_dir) == "nifti"
    with pytest.raises(DataError, match="does not look like the 'goldatlas' layout") as e:
        detect_layout(nifti_dir, "goldatlas")
    assert e.value.path == nifti_dir
    (tmp_path / "empty" / "p1").mkdir(parents=True)
    with pytest.raises(DataError, match="no known dataset layout"):
        detect_layout(tmp_path / "empty")
    with pytest.raises(DataError, match="data folder not found"):
        detect_layout(tmp_path / "missing")
    with pytest.raises(DataError, match="unknown layout"):
        detect_layout(nifti_dir, "bids")


def test_phantom_patient_on_the_t2_grid(phantom_dir):
    assert list_patients(phantom_dir) == ["phantom_000", "phantom_001"]
    p = load_patient(phantom_dir, "phantom_001")
    case = phantom.generate_patient(21, "tiny", 6, "own")
    assert set(p.volumes) == {"t1", "t2", "ct", "mask", "labels"} and p.mr_keys == ("t1", "t2")
    assert all(v.shape == (48, 48, 6) for v in p.volumes.values())
    assert np.array_equal(p.volumes["ct"], case.ct.astype(np.float32))
    assert np.array_equal(p.volumes["labels"], case.labels) and p.volumes["mask"].dtype == np.uint8
    assert np.allclose(p.affine, case.affine) and p.paths["t2"] == phantom_dir / "phantom_001" / "t2.nii.gz"
    assert any("t1 resampled onto the t2 grid" in n for n in p.notes)
    body = p.volumes["mask"] > 0
    assert np.corrcoef(p.volumes["t1"][body], phantom.generate_patient(21, "tiny", 6, "t2").t1[body])[0, 1] > 0.95


def test_nifti_errors_name_the_file_and_write_nothing(nifti_dir):
    before = sorted(p for p in nifti_dir.rglob("*"))
    folder = nifti_dir / "phantom_000"
    (folder / "ct.nii.gz").rename(folder / "ct_backup.nii.gz")
    with pytest.raises(DataError, match="missing modality ct") as e:
        load_patient(nifti_dir, "phantom_000")
    assert e.value.path == folder
    ct = read_nifti(folder / "ct_backup.nii.gz")
    shifted = ct.affine.copy()
    shifted[0, 3] += 5.0
    write_nifti(folder / "ct.nii.gz", ct.data.astype(np.int16), shifted)
    with pytest.raises(DataError, match="ct grid does not match t2") as e:
        load_patient(nifti_dir, "phantom_000")
    assert e.value.path == folder / "ct.nii.gz"
    write_nifti(folder / "ct.nii.gz", (ct.data + 1024).astype(np.int16), ct.affine)   # raw stored values
    with pytest.raises(DataError, match="Hounsfield"):
        load_patient(nifti_dir, "phantom_000")
    write_nifti(folder / "ct.nii.gz", ct.data.astype(np.int16), ct.affine)
    t2 = read_nifti(folder / "t2.nii.gz")
    bad = t2.data.copy()
    bad[3, 3, 3] = np.nan
    write_nifti(folder / "t2.nii.gz", bad, t2.affine)
    with pytest.raises(DataError, match="NaN") as e:
        load_patient(nifti_dir, "phantom_000")
    assert e.value.path == folder / "t2.nii.gz"
    write_nifti(folder / "t2.nii.gz", t2.data, t2.affine)
    t1 = read_nifti(folder / "t1.nii.gz")
    far = t1.affine.copy()
    far[2, 3] += 500.0
    write_nifti(folder / "t1.nii.gz", t1.data, far)
    with pytest.raises(DataError, match="covers only 0%"):
        load_patient(nifti_dir, "phantom_000")
    assert sorted(p.name for p in folder.iterdir()) == \
        ["ct.nii.gz", "ct_backup.nii.gz", "mask.nii.gz", "t1.nii.gz", "t2.nii.gz"]   # nothing else written
    assert len(before) + 1 == len(sorted(nifti_dir.rglob("*")))


def test_mr_only_patient_for_inference(nifti_dir):
    folder = nifti_dir / "phantom_001"
    p = patient_from_files({"t1": folder / "t1.nii.gz", "t2": folder / "t2.nii.gz", "ct": None})
    assert set(p.volumes) == {"t1", "t2", "mask"} and p.id == "phantom_001"
    assert "mask computed from the T2" in p.notes
    truth = read_nifti(folder / "mask.nii.gz").data > 0
    overlap = (p.volumes["mask"] > 0) & truth
    assert overlap.sum() > 0.8 * truth.sum()


def _write_goldatlas_patient(folder, case, site2: bool):
    """A Gold Atlas-like patient folder: all series as .dcm files side by side (data.md §1.2)."""
    t2_slope = float(case.t2.max()) / 30000
    write_dicom_series(folder, case.t2, case.affine, "MR", "T2 TSE tra", series_number=3, prefix="MR2",
                       slope=t2_slope)
    write_dicom_series(folder, case.t1, case.t1_affine, "MR", "T1 SE tra", series_number=4, prefix="MR1",
                       slope=float(case.t1.max()) / 30000)
    ct, ct_aff = case.ct, case.affine
    if site2:                                                     # slices stored top -> bottom, files reversed
        flip = np.eye(4)
        flip[2, 2], flip[2, 3] = -1, ct.shape[2] - 1
        ct, ct_aff = ct[:, :, ::-1], case.affine @ flip
    write_dicom_series(folder, ct, ct_aff, "CT", "CTtoMR", series_number=7, prefix="CT", reverse_files=site2)
    plan = case.affine.copy()
    plan[:3, 3] += 7.0
    write_dicom_series(folder, case.ct, plan, "CT", "Pelvis 3.0 B30f", series_number=2, prefix="CTplan")
    return t2_slope


def test_goldatlas_dicom_tree(tmp_path):
    root = tmp_path / "goldatlas"
    cases = {"1_01_P": phantom.generate_patient(30, "tiny", 6, "own"),
             "2_03_P": phantom.generate_patient(31, "tiny", 6, "own")}
    slopes = {pid: _write_goldatlas_patient(root / pid, c, pid.startswith("2_")) for pid, c in cases.items()}
    assert detect_layout(root) == "goldatlas"
    assert list_patients(root) == ["1_01_P", "2_03_P"]
    for pid, case in cases.items():
        p = load_patient(root, pid)
        assert set(p.volumes) == {"t1", "t2", "ct", "mask"}
        assert np.allclose(p.affine, case.affine, atol=1e-4)
        assert np.array_equal(p.volumes["ct"], case.ct.astype(np.float32))      # CTtoMR, not the planning CT
        assert np.abs(p.volumes["t2"] - case.t2).max() <= slopes[pid]           # int16 storage with a slope
        assert p.volumes["t1"].shape == case.t2.shape
        assert "series: t2='T2 TSE tra', t1='T1 SE tra', ct='CTtoMR'" in p.notes
        assert "mask computed from the CT" in p.notes
        assert any(n.startswith("t1 resampled") for n in p.notes)
        body = case.mask > 0
        ref = phantom.generate_patient(case.seed, "tiny", 6, "t2").t1
        assert np.corrcoef(p.volumes["t1"][body], ref[body])[0, 1] > 0.95
        assert (p.volumes["mask"] >= (case.labels > 0)).all()


def test_goldatlas_missing_series_lists_what_was_found(tmp_path):
    folder = tmp_path / "ga" / "1_02_P"
    case = phantom.generate_patient(32, "tiny", 4, "t2")
    write_dicom_series(folder, case.t2, case.affine, "MR", "T2 TSE", prefix="MR2", slope=float(case.t2.max()) / 3e4)
    write_dicom_series(folder, case.ct, case.affine, "CT", "CTtoMR", prefix="CT")
    with pytest.raises(DataError, match="missing modality t1") as e:
        load_patient(tmp_path / "ga", "1_02_P")
    assert "MR 'T2 TSE' (4 files)" in str(e.value) and e.value.path == folder
    (folder / "notes.dcm").write_text("not dicom")
    with pytest.raises(DataError, match="not a readable DICOM") as e:
        load_patient(tmp_path / "ga", "1_02_P")
    assert e.value.path == folder / "notes.dcm"


def test_synthrad_layout_single_mr(tmp_path):
    root = tmp_path / "Task1" / "pelvis"
    case = phantom.generate_patient(40, "tiny", 4, "t2")
    for pid in ("1PA001", "1PC018"):
        write_nifti(root / pid / "mr.nii.gz", case.t1, case.affine)
        write_nifti(root / pid / "ct.nii.gz", case.ct, case.affine)
        write_nifti(root / pid / "mask.nii.gz", case.mask, case.affine)
    (root / "overview").mkdir()
    assert detect_layout(root) == "synthrad" and list_patients(root) == ["1PA001", "1PC018"]
    p = load_patient(root, "1PC018")
    assert set(p.volumes) == {"mr", "ct", "mask"} and p.mr_keys == ("mr",)
    assert np.array_equal(p.volumes["mask"], case.mask)


def test_syndiff_mat_round_trip_and_layout(tmp_path):
    rng = np.random.default_rng(0)
    slices = rng.random((5, 24, 20)).astype(np.float32)         # (N, H, W)
    path = write_syndiff_mat(tmp_path / "data_train_T1.mat", slices)
    import h5py

    with h5py.File(path) as f:
        assert f["data_fs"].shape == (5, 20, 24)                 # stored (N, W, H) as SynDiff's loader expects
    assert np.array_equal(read_syndiff_mat(path), slices)
    assert detect_layout(tmp_path) == "syndiff_mat"
    with pytest.raises(DataError, match="slice stacks, not patients"):
        list_patients(tmp_path)
    (tmp_path / "data_val_T2.mat").write_text("not hdf5")
    with pytest.raises(DataError, match="not an HDF5"):
        read_syndiff_mat(tmp_path / "data_val_T2.mat")


def test_ensure_dataset_generates_the_phantom_once(tmp_path):
    ws = resolve("smoke", root=tmp_path)
    root = ensure_dataset(ws, progress=False)
    assert root == tmp_path / "data" / "generated" / "smoke" / "phantom"
    manifest = phantom.read_manifest(root)
    assert len(manifest["patients"]) == 3 and manifest["grid"] == "tiny" and manifest["n_slices"] == 8
    stamp = (root / "phantom.json").stat().st_mtime_ns
    assert ensure_dataset(ws, progress=False) == root and (root / "phantom.json").stat().st_mtime_ns == stamp
    ws2 = resolve("smoke", root=tmp_path, data={"phantom_slices": 6})
    ensure_dataset(ws2, progress=False)                          # another spec: regenerated
    assert phantom.read_manifest(root)["n_slices"] == 6
    assert nib.load(str(root / "phantom_000" / "t2.nii.gz")).shape == (48, 48, 6)
    with pytest.raises(DataError, match="data folder not found"):
        ensure_dataset(resolve("smoke", data_dir=tmp_path / "nope", root=tmp_path))


@pytest.mark.parametrize("missing", ["t2", "t1", "ct"])
def test_a_patient_missing_any_modality_is_an_error_naming_it(nifti_dir, tmp_path, missing):
    """Every modality follows one rule: a patient folder without it is an error naming the patient and the file,
    never silently skipped (the split would quietly take another patient)."""
    from mm2ct.config import load_profile
    from mm2ct.data.slices import build_cache

    folder = nifti_dir / "phantom_000"
    (folder / f"{missing}.nii.gz").rename(folder / f"{missing}_old.nii.gz")
    assert list_patients(nifti_dir) == ["phantom_000", "phantom_001"]
    with pytest.raises(DataError, match=f"missing modality {missing}: no {missing}.nii.gz") as e:
        load_patient(nifti_dir, "phantom_000")
    assert e.value.path == folder and "phantom_000" in str(e.value)
    cfg = load_profile("smoke", data={"n_patients": 2, "split": [1, 0, 1]})
    with pytest.raises(DataError, match=f"phantom_000.*{missing}.nii.gz"):
        build_cache(nifti_dir, tmp_path / "cache", cfg.data, progress=False)
    assert not (tmp_path / "cache").exists()
