"""`mm2ct translate` / translate_volume: NIfTI round trip on the input grid, T1 resampling, sample spread, and bad
inputs that must fail with the file named and leave no output (tiny untrained checkpoints, phantom volumes)."""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mm2ct.cli import main
from mm2ct.config import load_profile
from mm2ct.data.io import DataError
from mm2ct.data.phantom import generate_patient, write_patient
from mm2ct.data.preprocess import case_normalisers
from mm2ct.infer import spread_path, translate_volume
from mm2ct.checkpoints import EMA, atomic_save, make_checkpoint
from mm2ct.translators import build


def _save_checkpoint(path, model, cfg, normalisers=None):
    torch.manual_seed(0)
    tr = build(model, cfg)
    ck = make_checkpoint(tr, EMA(tr.generators(), cfg.train.ema_decay), None, normalisers, model, cfg, 1, 2, 0.0, 1,
                         1.0, "test", 42)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(ck, path)
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    # the smoke profile, smaller still: 16 px slices (the 48 px phantom grid is resampled down and back)
    cfg = load_profile("smoke", data={"image_size": 16}, translator={"nf": 4, "ngf": 4, "ndf": 4, "disc_ngf": 4})
    case = generate_patient(seed=5, grid="tiny", n_slices=4, t1_grid="own")
    pat = write_patient(case, root / "patient", labels=False)
    norms = case_normalisers(cfg.data, case)
    return {
        "root": root, "cfg": cfg, "t1": pat / "t1.nii.gz", "t2": pat / "t2.nii.gz", "norms": norms,
        "mm2ct": _save_checkpoint(root / "ck" / "mm2ct_nomamba.pt", "mm2ct_nomamba", cfg, norms),
        "syndiff_t1": _save_checkpoint(root / "ck" / "syndiff_t1.pt", "syndiff_t1", cfg, norms),
    }


def _outputs(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_round_trip_two_modalities_with_t1_resampled(env, tmp_path):
    t1, t2 = nib.load(env["t1"]), nib.load(env["t2"])
    assert t1.shape != t2.shape and not np.allclose(t1.affine, t2.affine)   # T1 on its own grid
    notes = []
    out = tmp_path / "out" / "sct.nii.gz"
    img = translate_volume(env["mm2ct"], t1=env["t1"], t2=env["t2"], out=out, progress=False, log=notes.append)
    assert any("resampled onto the t2 grid" in n for n in notes)
    assert _outputs(out.parent) == ["sct.nii.gz"]
    disk = nib.load(out)
    assert disk.shape == t2.shape and np.allclose(disk.affine, t2.affine)
    assert disk.get_data_dtype() == np.int16 and np.asanyarray(disk.dataobj).dtype == np.int16
    assert disk.dataobj.slope == 1 and disk.dataobj.inter == 0
    assert int(disk.header["qform_code"]) == int(t2.header["qform_code"])
    assert int(disk.header["sform_code"]) == int(t2.header["sform_code"])
    hu = np.asanyarray(disk.dataobj)
    assert hu.min() >= -1024 and hu.max() <= 3071
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), hu)
    assert b"mm2ct sCT mm2ct_nomamba" in disk.header["descrip"].tobytes()


def test_non_ras_input_keeps_its_grid(env, tmp_path):
    t2 = nib.load(env["t2"])
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = t2.shape[0] - 1
    data = np.asanyarray(t2.dataobj)[::-1].copy()
    aff = t2.affine @ flip                                     # same anatomy, x axis stored the other way (LAS)
    las = nib.Nifti1Image(data, aff)
    las.set_qform(aff, code=1)
    las.set_sform(aff, code=2)
    nib.save(las, tmp_path / "t1_las.nii.gz")
    assert nib.aff2axcodes(aff)[0] == "L"
    out = tmp_path / "sct.nii"
    translate_volume(env["syndiff_t1"], t1=tmp_path / "t1_las.nii.gz", out=out, progress=False, log=lambda m: None)
    disk = nib.load(out)
    assert disk.shape == las.shape and np.allclose(disk.affine, aff)
    assert int(disk.header["sform_code"]) == 2
    assert isinstance(disk, nib.Nifti1Image) and out.read_bytes()[344:348] == b"n+1\x00"


def test_cli_samples_writes_the_spread(env, tmp_path, capsys):
    out = tmp_path / "sct.nii.gz"
    rc = main(["translate", "--t1", str(env["t1"]), "--checkpoint", str(env["syndiff_t1"]), "-o", str(out),
               "--samples", "2", "--batch-size", "3", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert _outputs(tmp_path) == ["sct.nii.gz", "sct_std.nii.gz"] and spread_path(out).name == "sct_std.nii.gz"
    sct, std = nib.load(out), nib.load(spread_path(out))
    t1 = nib.load(env["t1"])
    assert sct.shape == std.shape == t1.shape and np.allclose(std.affine, t1.affine)
    s = np.asanyarray(std.dataobj)
    assert s.dtype == np.float32 and s.min() >= 0 and s.max() > 0     # two diffusion draws differ
    assert "spread" in capsys.readouterr().out


def test_single_modality_checkpoint_refuses_the_missing_one(env, tmp_path, capsys):
    out = tmp_path / "sct.nii.gz"
    rc = main(["translate", "--t2", str(env["t2"]), "--checkpoint", str(env["syndiff_t1"]), "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and "syndiff_t1" in err and "missing --t1" in err and str(env["syndiff_t1"]) in err
    rc = main(["translate", "--t1", str(env["t1"]), "--checkpoint", str(env["mm2ct"]), "-o", str(out)])
    assert rc == 1 and "missing --t2" in capsys.readouterr().err
    assert _outputs(tmp_path) == []


def _write(path, data, affine):
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), affine), path)
    return path


@pytest.mark.parametrize("problem", ["nan", "constant", "not_nifti", "truncated", "no_overlap", "missing", "empty",
                                     "zeros"])
def test_bad_inputs_fail_naming_the_file_and_write_nothing(env, tmp_path, problem):
    t1 = nib.load(env["t1"])
    data, aff = np.asanyarray(t1.get_fdata(), np.float32), t1.affine
    bad = tmp_path / "in" / "t1.nii.gz"
    bad.parent.mkdir()
    if problem == "nan":
        data[1, 2, 0] = np.nan
        _write(bad, data, aff)
        msg = "NaN"
    elif problem == "constant":
        _write(bad, np.full(data.shape, 3.0), aff)
        msg = "constant"
    elif problem == "empty":
        _write(bad, np.zeros((0, 4, 4)), aff)
        msg = "3-D volume|empty"
    elif problem == "zeros":
        _write(bad, np.zeros(data.shape), aff)
        msg = "constant"
    elif problem == "not_nifti":
        bad.write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
        msg = "NIfTI"
    elif problem == "truncated":
        blob = env["t1"].read_bytes()
        bad.write_bytes(blob[: len(blob) // 2])
        msg = "truncated or corrupt"
    elif problem == "no_overlap":
        far = aff.copy()
        far[:3, 3] += 5000.0
        _write(bad, data, far)
        msg = "covers only 0%"
    else:
        msg = "not found"
    out = tmp_path / "out" / "sct.nii.gz"
    with pytest.raises(DataError, match=msg) as e:
        translate_volume(env["mm2ct"], t1=bad, t2=env["t2"], out=out, samples=2, progress=False, log=lambda m: None)
    assert str(bad) in str(e.value)
    assert _outputs(out.parent) == []


def test_output_and_checkpoint_errors(env, tmp_path):
    with pytest.raises(ValueError, match="must be a NIfTI file name"):
        translate_volume(env["syndiff_t1"], t1=env["t1"], out=tmp_path / "sct.mha", progress=False)
    with pytest.raises(ValueError, match="would overwrite the input"):
        translate_volume(env["syndiff_t1"], t1=env["t1"], out=env["t1"], progress=False)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=str(junk)):
        translate_volume(junk, t1=env["t1"], out=tmp_path / "sct.nii.gz", progress=False)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        translate_volume(tmp_path / "none.pt", t1=env["t1"], out=tmp_path / "sct.nii.gz", progress=False)
    assert _outputs(tmp_path) == ["junk.pt"]


def test_normalisation_from_the_run_cache_or_refused(env, tmp_path):
    """A checkpoint without normalisers: the slice cache next to its run folder supplies them (same data config);
    without one, SynDiff's fitted global maximum is unknown -> a clear error."""
    import json

    cfg = env["cfg"]
    ck = _save_checkpoint(tmp_path / "runs" / "smoke" / "syndiff_t1" / "best.pt", "syndiff_t1", cfg)
    with pytest.raises(ValueError, match="--cache"):
        translate_volume(ck, t1=env["t1"], progress=False, log=lambda m: None)
    cache = tmp_path / "data" / "cache" / "smoke"
    cache.mkdir(parents=True)
    (cache / "meta.json").write_text(json.dumps({"data": cfg.to_dict()["data"], "normalisers": env["norms"]}))
    a = translate_volume(ck, t1=env["t1"], progress=False, log=lambda m: None)
    b = translate_volume(env["syndiff_t1"], t1=env["t1"], progress=False, log=lambda m: None)
    np.testing.assert_array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
    other = tmp_path / "elsewhere"
    shutil.copytree(cache, other)
    shutil.rmtree(cache)
    c = translate_volume(ck, t1=env["t1"], cache=other, progress=False, log=lambda m: None)
    np.testing.assert_array_equal(np.asanyarray(c.dataobj), np.asanyarray(b.dataobj))


def test_no_output_may_replace_an_input_or_the_checkpoint(env, tmp_path):
    """Every file translate writes (the sCT and, with --samples, its spread map) is checked against every input and
    the checkpoint, symlinks followed: `--t1 p1/scan_std.nii.gz -o p1/scan.nii.gz --samples 2` is refused."""
    d = tmp_path / "p1"
    d.mkdir()
    t1 = Path(shutil.copy(env["t1"], d / "scan_std.nii.gz"))
    before = t1.read_bytes()
    with pytest.raises(ValueError, match="would overwrite the input.*scan_std"):
        translate_volume(env["syndiff_t1"], t1=t1, out=d / "scan.nii.gz", samples=2, progress=False)
    rc = main(["translate", "--t1", str(t1), "--checkpoint", str(env["syndiff_t1"]), "-o", str(d / "scan.nii.gz"),
               "--samples", "2", "--no-progress"])
    assert rc != 0 and t1.read_bytes() == before
    link = tmp_path / "link.nii.gz"
    link.symlink_to(t1)
    with pytest.raises(ValueError, match="would overwrite the input"):
        translate_volume(env["syndiff_t1"], t1=t1, out=link, progress=False)
    ck = Path(shutil.copy(env["syndiff_t1"], d / "model_std.nii.gz"))   # a checkpoint by any name
    with pytest.raises(ValueError, match="would overwrite the checkpoint"):
        translate_volume(ck, t1=env["t1"], out=d / "model.nii.gz", samples=2, progress=False)
    assert t1.read_bytes() == before and _outputs(d) == ["model_std.nii.gz", "scan_std.nii.gz"]
    # one sample writes no spread map: a file of that name is no obstacle
    translate_volume(env["syndiff_t1"], t1=t1, out=d / "scan.nii.gz", progress=False, log=lambda m: None)
    assert t1.read_bytes() == before


def test_staging_folders_of_killed_translations_are_swept(env, tmp_path):
    import subprocess

    p = subprocess.Popen(["true"])
    p.wait()
    stale = tmp_path / f".sct.nii.gz.tmp-{p.pid}"
    stale.mkdir()
    (stale / "sct.nii.gz").write_bytes(b"half")
    translate_volume(env["syndiff_t1"], t1=env["t1"], out=tmp_path / "sct.nii.gz", progress=False, log=lambda m: None)
    assert _outputs(tmp_path) == ["sct.nii.gz"]
