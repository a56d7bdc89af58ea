"""The procedural pelvis phantom (docs/data.md §4): determinism, formats, tissue values, variability, T1 grid,
and the complementarity of T1 and T2 for predicting HU (§4.4)."""
from __future__ import annotations

import argparse

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from mm2ct.cli import SUBCOMMANDS
from mm2ct.data import phantom
from mm2ct.data.io import read_nifti
from mm2ct.data.preprocess import resample_to_grid

L = phantom.LABELS


@pytest.fixture(scope="module")
def coarse_case():
    return phantom.generate_patient(4, "coarse", n_slices=8, t1_grid="t2")


def test_deterministic_per_seed_and_anatomy_independent_of_the_grid():
    a = phantom.generate_patient(7, "tiny", 8, "own")
    b = phantom.generate_patient(7, "tiny", 8, "own")
    for key in ("t1", "t2", "ct", "mask", "labels", "affine", "t1_affine"):
        assert np.array_equal(getattr(a, key), getattr(b, key)), key
    c = phantom.generate_patient(8, "tiny", 8, "own")
    assert not np.array_equal(a.ct, c.ct)
    d = phantom.generate_patient(7, "tiny", 4, "t2")              # another grid: same patient
    anatomy = ("tilt_deg", "scale", "body_lr_mm", "bladder_ml", "prostate_ml", "rectal_content", "bowel_loops",
               "marrow_fat_fraction", "field_strength_t")
    assert {k: a.params[k] for k in anatomy} == {k: d.params[k] for k in anatomy}


def test_formats_ranges_and_ras_grid():
    case = phantom.generate_patient(1, "tiny", 8, "own")
    assert case.t2.shape == case.ct.shape == case.mask.shape == case.labels.shape == (48, 48, 8)
    assert case.t1.dtype == case.t2.dtype == np.float32 and case.ct.dtype == np.int16
    assert case.mask.dtype == np.uint8 and set(np.unique(case.mask)) == {0, 1}
    assert case.ct.min() >= -1024 and case.ct.max() <= 3071 and case.ct.max() > 600    # bone present
    assert case.t1.min() >= 0 and case.t2.min() >= 0
    assert nib.aff2axcodes(case.affine) == ("R", "A", "S")
    assert np.allclose(np.sqrt((case.affine[:3, :3] ** 2).sum(0)), [448 / 48, 448 / 48, 10.0])
    centre = case.affine @ [23.5, 23.5, 3.5, 1]
    assert np.allclose(centre[:3], 0.0)                           # origin at the volume centre (data.md §4.1)
    assert case.mask[0, 0, 0] == 0 and case.mask[24, 24, 4] == 1
    dilate = lambda n: ndimage.binary_dilation(case.labels > 0, np.ones((3, 3, 1), bool), iterations=n)  # noqa
    assert (case.mask >= dilate(2)).all() and (case.mask <= dilate(3)).all()   # body (any sub-voxel) + 2 voxels


def test_presets_and_bad_arguments():
    assert (phantom.GRIDS["gold"].n_xy, phantom.GRIDS["gold"].spacing_xy, phantom.GRIDS["gold"].spacing_z) == \
        (256, 1.75, 2.5)
    assert phantom.GRIDS["coarse"].n_xy == 128 and phantom.GRIDS["tiny"].n_xy == 48
    with pytest.raises(ValueError, match="unknown phantom grid"):
        phantom.generate_patient(0, "huge")
    with pytest.raises(ValueError, match="t1_grid"):
        phantom.generate_patient(0, "tiny", t1_grid="t1")


def test_tissue_values_follow_the_table(coarse_case):
    """Pure voxels (label equal in a 3x3x1 neighbourhood) carry the HU and the T1w/T2w order of data.md §4.3."""
    c = coarse_case
    pure = {}
    for name in ("fat", "muscle", "urine", "marrow", "cortical_bone"):
        m = c.labels == L[name]
        m = ndimage.binary_erosion(m, np.ones((3, 3, 1), bool))
        assert m.sum() > 5, name
        pure[name] = m
    hu = {n: float(np.median(c.ct[m])) for n, m in pure.items()}
    assert hu["fat"] == pytest.approx(-100, abs=30)
    assert hu["muscle"] == pytest.approx(45, abs=30)
    assert hu["urine"] == pytest.approx(8, abs=30)
    assert 50 < hu["marrow"] < 400 and hu["cortical_bone"] > 400
    t1 = {n: float(np.median(c.t1[m])) for n, m in pure.items()}
    t2 = {n: float(np.median(c.t2[m])) for n, m in pure.items()}
    assert t1["fat"] > t1["marrow"] > t1["muscle"] > t1["cortical_bone"]        # fat bright on T1w
    assert t2["urine"] > t2["fat"] > t2["marrow"] > t2["muscle"]                 # fluid bright on T2w
    assert t1["muscle"] > t1["urine"]
    assert np.median(c.ct[c.labels == 0]) == pytest.approx(-1000, abs=20)


def test_anatomy_varies_between_seeds():
    cases = [phantom.generate_patient(s, "tiny", 8, "t2") for s in (10, 11, 12)]
    for key in ("body_lr_mm", "body_ap_mm", "bladder_ml", "prostate_ml", "marrow_fat_fraction", "tilt_deg"):
        values = [c.params[key] for c in cases]
        assert len(set(values)) == 3, key
    volumes = np.array([[np.sum(c.labels == L[n]) for n in ("fat", "muscle", "urine", "marrow")] for c in cases])
    assert (volumes.std(0) > 0).all()
    for c in cases:                                               # every structure of data.md §4.2 is present
        present = set(np.unique(c.labels))
        assert {L["fat"], L["muscle"], L["cortical_bone"], L["marrow"], L["urine"]} <= present


def test_t1_on_its_own_grid_resamples_onto_the_anatomy():
    own = phantom.generate_patient(3, "tiny", 8, "own")
    same = phantom.generate_patient(3, "tiny", 8, "t2")
    assert own.t1.shape[2] != own.t2.shape[2] and not np.allclose(own.t1_affine, own.affine)
    spacing = np.sqrt((own.t1_affine[:3, :3] ** 2).sum(0))
    assert spacing[2] == pytest.approx(12.0)                      # 1.2 x thicker slices
    for key in ("t2", "ct", "labels"):                            # only T1 depends on the T1 grid
        assert np.array_equal(getattr(own, key), getattr(same, key)), key
    res = resample_to_grid(own.t1, own.t1_affine, own.t2.shape, own.affine)
    body = own.mask > 0
    r = np.corrcoef(res[body], same.t1[body])[0, 1]
    r_unaligned = np.corrcoef(own.t1[:, :, :8][body], same.t1[body])[0, 1]
    assert r > 0.95 and (1 - r) < 0.6 * (1 - r_unaligned)         # resampling by the affines aligns T1 with T2


def test_t1_and_t2_carry_complementary_information_about_hu():
    """data.md §4.4: a per-voxel k-NN estimator of HU from (T1, T2) beats the same estimator from either alone.

    Four tiny patients; fit on their even slices, test on the odd ones (intensities scaled by each volume's 99th
    percentile in the body).  Measured: MAE T1 89, T2 78, T1+T2 56 HU (0.71 of the best single input; seed sets
    10-13 and 20-23 give 0.84 and 0.78); marrow 359 / 266 / 142 HU, bladder/bowel fluid and prostate 77 / 33 /
    19 HU.  The assertions require at most 0.85 of the best single input overall, in marrow and in fluids.
    """
    cases = [phantom.generate_patient(s, "tiny", 8, "t2") for s in range(4)]
    parts = {0: [], 1: []}
    for c in cases:
        body = c.mask > 0
        feats = np.stack([v / np.percentile(v[body], 99) for v in (c.t1, c.t2)], -1)
        for parity in (0, 1):
            m = body.copy()
            m[:, :, 1 - parity::2] = False
            parts[parity].append((feats[m], c.ct[m].astype(np.float32), c.labels[m]))
    x, y = (np.concatenate([p[i] for p in parts[0]]) for i in (0, 1))
    xt, yt, lt = (np.concatenate([p[i] for p in parts[1]]) for i in (0, 1, 2))
    mae, err = {}, {}
    for name, cols in (("t1", [0]), ("t2", [1]), ("t1+t2", [0, 1])):
        _, idx = cKDTree(x[:, cols]).query(xt[:, cols], k=20)
        err[name] = np.abs(y[idx].mean(1) - yt)
        mae[name] = float(err[name].mean())
    best_single = min(mae["t1"], mae["t2"])
    assert mae["t1+t2"] < 0.85 * best_single, mae
    fluids = np.isin(lt, [L["urine"], L["bowel_fluid"], L["seminal_vesicle"], L["prostate_pz"]])
    for m in (lt == L["marrow"], fluids):
        assert err["t1+t2"][m].mean() < 0.85 * min(err["t1"][m].mean(), err["t2"][m].mean())


def test_cli_writes_the_generic_layout_with_a_manifest(tmp_path):
    assert SUBCOMMANDS["phantom"][0] == "mm2ct.data.phantom"
    parser = argparse.ArgumentParser()
    phantom.configure(parser)
    out = tmp_path / "ph"
    args = parser.parse_args(["--patients", "2", "--out", str(out), "--seed", "5", "--size", "tiny", "--slices", "4"])
    assert phantom.run(args) == 0
    manifest = phantom.read_manifest(out)
    assert [p["id"] for p in manifest["patients"]] == ["phantom_000", "phantom_001"]
    assert manifest["grid"] == "tiny" and manifest["n_slices"] == 4 and manifest["t1_grid"] == "own"
    for pid in ("phantom_000", "phantom_001"):
        assert sorted(p.name for p in (out / pid).iterdir()) == \
            ["ct.nii.gz", "labels.nii.gz", "mask.nii.gz", "t1.nii.gz", "t2.nii.gz"]
    case = phantom.generate_patient(6, "tiny", 4, "own")          # patient 1 has seed 5 + 1
    ct = nib.load(str(out / "phantom_001" / "ct.nii.gz"))
    assert ct.get_data_dtype() == np.int16 and np.array_equal(np.asanyarray(ct.dataobj), case.ct)
    t1 = read_nifti(out / "phantom_001" / "t1.nii.gz")
    assert np.allclose(t1.affine, case.t1_affine, atol=1e-4) and np.allclose(t1.data, case.t1)


def test_counts_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="n_slices must be >= 1, got 0"):
        phantom.generate_patient(0, "tiny", n_slices=0)
    for n in (0, -2):
        with pytest.raises(ValueError, match=f"n_patients must be >= 1, got {n}"):
            phantom.generate_dataset(tmp_path / "ph", n, grid="tiny", progress=False)
    assert not (tmp_path / "ph").exists()


def test_out_must_be_new_empty_or_a_previous_phantom(tmp_path):
    """A dataset folder of the user's is refused (a manifest there would hide their patients); a previous phantom
    is regenerated, and patients of it that the new one does not have are removed."""
    data = tmp_path / "data"
    (data / "patient01").mkdir(parents=True)
    (data / "patient01" / "t2.nii.gz").write_bytes(b"user's scan")
    with pytest.raises(phantom.PhantomFolderError, match="patient01") as e:
        phantom.generate_dataset(data, 1, grid="tiny", n_slices=2, progress=False)
    assert str(data) in str(e.value)
    assert sorted(p.name for p in data.iterdir()) == ["patient01"]
    out = phantom.generate_dataset(tmp_path / "ph", 2, grid="tiny", n_slices=2, progress=False)
    (out / ".phantom_000.tmp-999999999").mkdir()                          # a killed writer's leftovers are ours
    phantom.generate_dataset(out, 1, grid="tiny", n_slices=2, seed=3, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["phantom.json", "phantom_000"]
    assert phantom.read_manifest(out)["seed"] == 3
    (out / "notes.txt").write_text("mine")
    with pytest.raises(phantom.PhantomFolderError, match="notes.txt"):
        phantom.generate_dataset(out, 1, grid="tiny", n_slices=2, progress=False)
