"""Splits, the slice cache and slice datasets (docs/data.md §1.5; method.md open choices 1, 2, 5)."""
from __future__ import annotations

import argparse
import csv
import shutil

import numpy as np
import pytest
import torch

from mm2ct.cli import SUBCOMMANDS
from mm2ct.data import slices
from mm2ct.data.io import DataError
from mm2ct.data.preprocess import SliceGeometry, unit_to_hu
from mm2ct.data.slices import (SliceDataset, build_cache, ensure_cache, export_syndiff_mat, load_meta,
                               load_normalisers, make_split, read_split_csv, select_slices, write_split_csv)
from mm2ct.data.sources import load_patient, read_syndiff_mat
from mm2ct.workspace import resolve


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke profile's workspace in a temporary root: 3 tiny phantom patients, split 1/1/1, 32 px."""
    ws = resolve("smoke", root=tmp_path_factory.mktemp("root"))
    return ws, ensure_cache(ws, progress=False)


def test_split_is_patient_level_complete_and_stable():
    ids = [f"p{i:02d}" for i in range(15)]
    a = make_split(ids, (9, 2, 4), seed=0)
    assert sorted(a) == ids
    assert [sum(v == s for v in a.values()) for s in slices.SPLITS] == [9, 2, 4]
    assert make_split(list(reversed(ids)), (9, 2, 4), seed=0) == a         # independent of input order
    assert make_split(ids, (9, 2, 4), seed=1) != a
    with pytest.raises(ValueError, match="needs 14 patients, got 15"):
        make_split(ids, (9, 2, 3), seed=0)
    with pytest.raises(DataError, match="patient listed twice: p01"):
        make_split(ids[:14] + ["p01"], (9, 2, 4), seed=0)


def test_split_csv_round_trip_and_errors(tmp_path):
    split = make_split([f"p{i}" for i in range(6)], (3, 1, 2), 3)
    path = write_split_csv(tmp_path / "split.csv", split)
    assert read_split_csv(path) == split
    path.write_text("patient,split\np1,train\np2,test\np1,val\n")
    with pytest.raises(DataError, match="line 4: patient 'p1' listed twice") as e:
        read_split_csv(path)
    assert e.value.path == path
    path.write_text("patient,split\np1,holdout\n")
    with pytest.raises(DataError, match="unknown split 'holdout'"):
        read_split_csv(path)


def test_committed_goldatlas_split_is_the_seeded_split_of_the_first_15_subjects():
    sites = [f"1_0{i}_P" for i in range(1, 9)] + [f"2_{n:02d}_P" for n in (3, 4, 5, 6, 9, 10, 11)] + \
        [f"3_0{i}_P" for i in range(1, 5)]                                    # data.md §1.2: 19 patients
    first15 = sorted(sites)[:15]
    committed = read_split_csv(slices.goldatlas_split_csv())
    assert committed == make_split(first15, (9, 2, 4), 0)
    assert not any(p.startswith("3_") for p in committed)


def test_choose_split_uses_the_committed_goldatlas_split_only_when_it_fits(tmp_path):
    from mm2ct.config import DataConfig

    first15 = sorted(read_split_csv(slices.goldatlas_split_csv()))
    committed = read_split_csv(slices.goldatlas_split_csv())
    assert slices.choose_split(first15, DataConfig(), "goldatlas") == committed
    assert slices.choose_split(first15, DataConfig(split_seed=5), "nifti") == make_split(first15, (9, 2, 4), 5)
    assert slices.choose_split(first15, DataConfig(split=(11, 1, 3)), "goldatlas") == \
        make_split(first15, (11, 1, 3), 0)
    own = write_split_csv(tmp_path / "mine.csv", {"1_01_P": "train", "1_02_P": "val", "1_03_P": "test"})
    assert slices.choose_split(first15, DataConfig(split_csv=str(own)), "goldatlas") == read_split_csv(own)
    with pytest.raises(DataError, match="not in the data folder: 1_01_P"):
        slices.choose_split(first15[1:], DataConfig(split_csv=str(own)), "goldatlas")


def test_select_slices():
    mask = np.zeros((4, 4, 9), np.uint8)
    mask[1, 1, 2:8] = 1
    assert select_slices(mask, None) == [2, 3, 4, 5, 6, 7]
    assert select_slices(mask, 3) == [3, 4, 5]


def test_cache_layout_and_meta(smoke):
    ws, cache = smoke
    assert cache == ws.cache_dir
    meta = load_meta(cache)
    assert meta["layout"] == "phantom" and meta["mr_keys"] == ["t1", "t2"] and meta["image_size"] == 32
    assert meta["counts"] == {"train": 1, "val": 1, "test": 1}
    with open(cache / "splits.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["patient"] for r in rows) == ["phantom_000", "phantom_001", "phantom_002"]
    for pid, info in meta["patients"].items():
        assert len(info["slices"]) == 4 and info["shape"] == [48, 48, 8]    # slices_per_patient 4 of 8
        assert info["geometry"]["zoom"] == pytest.approx(32 / 48)
    norms = load_normalisers(cache)
    assert norms["t1"].method == "syndiff" and norms["t1"].global_max > 1 and norms["ct"].method == "window"


def test_paired_items(smoke):
    ws, cache = smoke
    ds = SliceDataset(cache, "train")
    assert len(ds) == 4
    item = ds[1]
    assert set(item) == {"t1", "t2", "ct", "mask", "patient", "slice"}
    for k in ("t1", "t2", "ct", "mask"):
        assert item[k].shape == (1, 32, 32) and item[k].dtype == torch.float32
    assert set(torch.unique(item["mask"]).tolist()) <= {0.0, 1.0}
    allv = torch.stack([torch.cat([ds[i][k] for k in ("t1", "t2", "ct")]) for i in range(len(ds))])
    assert allv.min() >= -1.0 and allv.max() <= 1.0                         # training patient: max -> +1
    meta = load_meta(cache)
    assert item["patient"] in meta["patients"] and item["slice"] == meta["patients"][item["patient"]]["slices"][1]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["t1"].shape == (2, 1, 32, 32) and len(batch["patient"]) == 2


def test_cached_slices_invert_to_hu_and_match_a_new_normalisation(smoke):
    """What inference needs: CT slices -> HU on the source grid; a patient's MR -> the cached MR slices."""
    ws, cache = smoke
    meta = load_meta(cache)
    ds = SliceDataset(cache, "test")
    pid = ds.patients[0]
    info = meta["patients"][pid]
    p = load_patient(ws.data_root, pid)
    geom = SliceGeometry(tuple(info["shape"]), meta["image_size"])
    z = info["slices"]
    ct_unit = np.stack([ds[i]["ct"][0].numpy() for i in range(len(ds))])  # (Z, S, S)
    expect = geom.to_slices(p.volumes["ct"][:, :, z], cval=-1024.0)
    assert np.abs(unit_to_hu(ct_unit, ws.cfg.data) - expect).max() < 0.01
    norms = load_normalisers(cache)
    scale = norms["t2"].scale(p.volumes["t2"], p.volumes["mask"])
    assert scale == pytest.approx(info["scales"]["t2"])
    t2 = geom.to_slices(norms["t2"].apply(p.volumes["t2"], scale)[:, :, z], cval=-1.0)
    assert np.allclose(t2, np.stack([ds[i]["t2"][0].numpy() for i in range(len(ds))]), atol=1e-5)
    hu = geom.from_slices(unit_to_hu(ct_unit, ws.cfg.data))                 # back on the 48 x 48 grid
    assert hu.shape == (48, 48, len(z))
    body = p.volumes["mask"][:, :, z] > 0
    assert np.median(np.abs(hu - p.volumes["ct"][:, :, z])[body]) < 60      # resampled 48 -> 32 -> 48 px


def test_unpaired_sampling_shuffles_ct_across_patients(tmp_path):
    ws = resolve("smoke", root=tmp_path, data={"split": [2, 0, 1], "slices_per_patient": None})
    cache = ensure_cache(ws, progress=False)
    paired = SliceDataset(cache, "train")
    un = SliceDataset(cache, "train", paired=False, seed=3)
    assert len(un) == len(paired) == 16 and len(SliceDataset(cache, "val")) == 0
    items = [un[i] for i in range(len(un))]
    assert all(set(it) >= {"ct", "mask_ct", "patient_ct", "slice_ct"} for it in items)
    assert all(torch.equal(it["t1"], paired[i]["t1"]) for i, it in enumerate(items))   # MR side untouched
    other = sum(it["patient_ct"] != it["patient"] for it in items)
    assert other >= 4                                                        # mostly another patient
    j = int(un.ct_index[5])
    assert torch.equal(items[5]["ct"], paired[j]["ct"]) and torch.equal(items[5]["mask_ct"], paired[j]["mask"])
    assert sorted(un.ct_index.tolist()) == list(range(16))                   # a permutation: every CT once
    again = SliceDataset(cache, "train", paired=False, seed=3)
    assert np.array_equal(again.ct_index, un.ct_index)
    un.set_epoch(1)
    assert not np.array_equal(again.ct_index, un.ct_index)


def test_ensure_cache_reuses_or_rebuilds_on_config_change(smoke, tmp_path):
    ws, cache = smoke
    stamp = (cache / "meta.json").stat().st_mtime_ns
    assert ensure_cache(ws, progress=False) == cache and (cache / "meta.json").stat().st_mtime_ns == stamp
    ws24 = resolve("smoke", root=ws.root, data={"image_size": 24})
    ensure_cache(ws24, progress=False)
    assert load_meta(cache)["image_size"] == 24 and SliceDataset(cache, "val")[0]["t1"].shape == (1, 24, 24)
    assert not any(p.name.startswith(".") for p in cache.parent.iterdir())    # no temporary folders left
    ensure_cache(ws, progress=False)                                         # back to the smoke config
    assert load_meta(cache)["image_size"] == 32


def test_bad_source_leaves_the_old_cache(smoke, tmp_path):
    ws, cache = smoke
    data = tmp_path / "bad"
    data.mkdir()
    with pytest.raises(DataError, match="no known dataset layout"):
        build_cache(data, cache, ws.cfg.data, progress=False)
    assert load_meta(cache)["layout"] == "phantom"


def test_more_patients_asked_than_found(smoke, tmp_path):
    ws, _ = smoke
    cfg = resolve("smoke", root=ws.root, data={"n_patients": 5, "split": [3, 1, 1]}).cfg
    with pytest.raises(DataError, match="n_patients = 5 but only 3 patients found"):
        build_cache(ws.data_root, tmp_path / "cache", cfg.data, progress=False)
    assert not (tmp_path / "cache").exists()


def test_syndiff_mat_export_and_import(smoke, tmp_path):
    ws, cache = smoke
    files = export_syndiff_mat(cache, tmp_path / "mat")
    assert sorted(p.name for p in files) == sorted(f"data_{s}_{k}.mat" for s in slices.SPLITS
                                                   for k in ("T1", "T2", "CT"))
    t1 = np.load(cache / "train" / "t1.npy")
    assert np.allclose(read_syndiff_mat(tmp_path / "mat" / "data_train_T1.mat"), (t1 + 1) / 2)
    back = build_cache(tmp_path / "mat", tmp_path / "cache2", ws.cfg.data, progress=False)
    ds = SliceDataset(back, "train")
    assert load_meta(back)["layout"] == "syndiff_mat" and ds.patients[0] == "mat_train"
    assert np.allclose(ds[2]["t1"][0].numpy(), t1[2], atol=1e-6)


def test_prepare_cli(smoke, tmp_path):
    ws, _ = smoke
    assert SUBCOMMANDS["prepare"][0] == "mm2ct.data.slices"
    parser = argparse.ArgumentParser()
    slices.configure(parser)
    out = tmp_path / "cache"
    args = parser.parse_args(["--profile", "smoke", "--source", str(ws.data_root), "--out", str(out)])
    assert slices.run(args) == 0
    assert load_meta(out)["counts"] == {"train": 1, "val": 1, "test": 1}


def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_build_cache_replaces_only_a_previous_cache(smoke, tmp_path):
    """The cache folder is replaced only when it holds a previous cache (its meta.json with key and version): a
    user's folder or file is refused unless overwrite is asked for, and the dataset itself never is."""
    ws, _ = smoke
    src = tmp_path / "src"
    shutil.copytree(ws.data_root, src)
    data_before = _tree(src)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(DataError, match="not an mm2ct slice cache.*overwrite") as e:
        build_cache(src, mine, ws.cfg.data, progress=False)
    assert e.value.path == mine and (mine / "notes.txt").read_text() == "keep"
    file = tmp_path / "file.txt"
    file.write_text("keep")
    with pytest.raises(DataError, match="not an mm2ct slice cache"):
        build_cache(src, file, ws.cfg.data, progress=False)
    assert file.read_text() == "keep" and not list(tmp_path.glob(".file.txt*"))
    for out in (src, src / "cache", src / "phantom_000", tmp_path):    # the dataset, inside it, or around it
        with pytest.raises(DataError, match="dataset folder"):
            build_cache(src, out, ws.cfg.data, overwrite=True, progress=False)
    assert _tree(src) == data_before and (mine / "notes.txt").is_file()
    # a previous cache is replaced without asking; a user's folder only when asked
    cache = build_cache(src, tmp_path / "cache", ws.cfg.data, progress=False)
    assert build_cache(src, cache, ws.cfg.data, progress=False) == cache and load_meta(cache)["key"]
    assert build_cache(src, mine, ws.cfg.data, overwrite=True, progress=False) == mine
    assert not (mine / "notes.txt").exists() and load_meta(mine)["version"] == slices.CACHE_VERSION
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_leftovers_of_killed_builds_are_swept(smoke, tmp_path):
    """A build killed before it could clean up leaves .NAME.tmp-PID (and .NAME.tmp-PID.old while it swaps); the
    next build removes those of processes that no longer exist, and leaves a live one's alone."""
    import os
    import subprocess

    ws, _ = smoke
    p = subprocess.Popen(["true"])
    p.wait()
    dead = [tmp_path / f".cache.tmp-{p.pid}", tmp_path / f".cache.tmp-{p.pid}.old"]
    for d in dead:
        (d / "train").mkdir(parents=True)
    live = tmp_path / f".other.tmp-{os.getppid()}"
    live.mkdir()
    build_cache(ws.data_root, tmp_path / "cache", ws.cfg.data, progress=False)
    assert not any(d.exists() for d in dead) and live.is_dir()


def test_a_corrupt_cache_file_is_named(smoke, tmp_path):
    ws, cache = smoke
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    (copy / "train" / "t1.npy").write_bytes(b"not an array")
    with pytest.raises(DataError, match="t1.npy: unreadable.*prepare --overwrite") as e:
        SliceDataset(copy, "train")
    assert e.value.path == copy / "train" / "t1.npy"
