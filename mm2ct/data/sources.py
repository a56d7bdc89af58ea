"""Dataset layouts -> ``Patient`` records with every volume on one grid (``docs/data.md`` §1, §2, §4, §5).

Layouts (``detect_layout`` recognises each from the folder; a folder that matches none gets a ``DataError`` that
says what was expected):

* ``phantom``     the embedded phantom: ``DIR/phantom.json`` + ``DIR/<patient>/{t1,t2,ct,mask[,labels]}.nii.gz``;
* ``nifti``       generic: ``DIR/<patient>/{t1,t2,ct[,mask]}.nii.gz`` (``.nii`` also accepted);
* ``goldatlas``   Gold Atlas male pelvis as distributed: ``DIR/<patient>/*.dcm``, all series of a patient in one
                  folder; series chosen by Modality + SeriesDescription: MR "T2", MR "T1", CT "CTtoMR" (the CT
                  deformed onto T2) (data.md §1.2);
* ``synthrad``    SynthRAD2023 task 1: ``DIR/<ID>/{mr,ct[,mask]}.nii.gz`` (one MR per patient: single-modality
                  baselines only, data.md §2.1); an ``overview`` folder is skipped;
* ``syndiff_mat`` SynDiff slice stacks ``DIR/data_{train,val,test}_{T1,T2,CT}.mat`` (HDF5 dataset ``data_fs``,
                  values in [0, 1]; data.md §1.5) - slices without patients or geometry, read by ``read_syndiff_mat``.

Grids: the T2 (or the single MR) volume defines the patient's grid.  T1 may lie on any overlapping grid and is
resampled onto it by its affine (data.md §1.3; no registration: see method.md open choice 4).  CT and mask must be
on the T2 grid (same shape, affine within 1e-3 mm) - except Gold Atlas, whose CTtoMR series is resampled onto T2
when its grid differs.  A missing mask is computed from the CT (body = largest component above -500 HU, dilated).
"""
from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mm2ct.atomic import atomic_path
from mm2ct.data import phantom as phantom_mod
from mm2ct.data.io import DataError, Volume, check_hu, read_dicom_header, read_dicom_series, read_nifti
from mm2ct.data.preprocess import body_mask_from_ct, body_mask_from_mr, overlap_fraction, resample_to_grid

LAYOUTS = ("phantom", "nifti", "goldatlas", "synthrad", "syndiff_mat")
MR_KEYS = {"phantom": ("t1", "t2"), "nifti": ("t1", "t2"), "goldatlas": ("t1", "t2"), "synthrad": ("mr",),
           "syndiff_mat": ("t1", "t2")}
_NIFTI_EXT = (".nii.gz", ".nii")
_MAT = re.compile(r"^data_(train|val|test)_(t1|t2|ct)\.mat$", re.IGNORECASE)


@dataclass
class Patient:
    """One patient on one grid: ``volumes[key]`` (X, Y, Z) in canonical RAS order, all on ``affine``.

    Keys: the MR modalities (``t1``, ``t2`` or ``mr``), ``ct`` (float32 HU, when available), ``mask`` (uint8) and
    ``labels`` (phantom tissue labels, when present).  ``reference`` is the grid-defining volume as read (its
    native affine and header: write results "like" it with ``io.write_like``).
    """
    id: str
    volumes: dict[str, np.ndarray]
    affine: np.ndarray
    paths: dict[str, Path]
    reference: Volume
    notes: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.reference.data.shape)

    @property
    def mr_keys(self) -> tuple[str, ...]:
        return tuple(k for k in ("t1", "t2", "mr") if k in self.volumes)


# ------------------------------------------------------------------------------------------------ assembling

def _same_grid(a: Volume, b: Volume) -> bool:
    return a.data.shape == b.data.shape and np.allclose(a.affine, b.affine, atol=1e-3)


def assemble(patient_id: str, vols: Mapping[str, Volume], resample_ct: bool = False) -> Patient:
    """Put volumes read from files on the reference grid (t2, else mr) with the checks of the module docstring."""
    ref_key = "t2" if "t2" in vols else "mr" if "mr" in vols else None
    if ref_key is None:
        where = next(iter(vols.values())).path if vols else patient_id
        raise DataError(where, f"patient {patient_id}: no T2 (or single MR) volume to define the grid")
    ref = vols[ref_key]
    out = {ref_key: ref.data.astype(np.float32, copy=False)}
    paths = {k: v.path for k, v in vols.items()}
    notes = []
    for key, vol in vols.items():
        if key == ref_key:
            continue
        if _same_grid(vol, ref):
            data = vol.data
        elif key == "t1" or (key == "ct" and resample_ct):
            frac = overlap_fraction(vol.data.shape, vol.affine, ref.data.shape, ref.affine)
            if frac < 0.5:
                raise DataError(vol.path, f"{key} grid covers only {100 * frac:.0f}% of the {ref_key} grid of "
                                          f"patient {patient_id}: not the same patient or scanner frame?")
            data = resample_to_grid(vol.data, vol.affine, ref.data.shape, ref.affine, order=1,
                                    cval=-1024.0 if key == "ct" else 0.0)
            notes.append(f"{key} resampled onto the {ref_key} grid ({100 * frac:.0f}% overlap)")
        else:
            diff = (f"affines differ by up to {np.abs(vol.affine - ref.affine).max():.3g} mm"
                    if vol.data.shape == ref.data.shape else f"shape {vol.data.shape} vs {ref.data.shape}")
            raise DataError(vol.path, f"{key} grid does not match {ref_key} ({ref.path}): {diff}; resample it onto "
                                      f"the {ref_key.upper()} grid first")
        out[key] = data
    if "ct" in out:
        check_hu(out["ct"], paths["ct"])
        out["ct"] = out["ct"].astype(np.float32, copy=False)
    if "mask" in out:
        m = out["mask"]
        if not np.isin(np.unique(m), (0, 1)).all():
            notes.append("mask binarised (> 0)")
        out["mask"] = (m > 0).astype(np.uint8)
        if not out["mask"].any():
            raise DataError(paths["mask"], "empty body mask")
    else:
        out["mask"] = body_mask_from_ct(out["ct"]) if "ct" in out else body_mask_from_mr(out[ref_key])
        notes.append("mask computed from the " + ("CT" if "ct" in out else ref_key.upper()))
    if "labels" in out:
        out["labels"] = np.rint(out["labels"]).astype(np.uint8)
    return Patient(patient_id, out, ref.affine.copy(), paths, ref, notes)


def _nifti(folder: Path, stem: str) -> Path | None:
    for ext in _NIFTI_EXT:
        p = folder / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


def patient_from_files(files: Mapping[str, str | os.PathLike | None], patient_id: str | None = None) -> Patient:
    """A ``Patient`` from NIfTI files, e.g. ``{"t1": ..., "t2": ..., "ct": None}`` (inference: MR only).

    Keys: t1, t2, mr, ct, mask, labels; ``None`` values are skipped.
    """
    files = {k: Path(v) for k, v in files.items() if v is not None}
    unknown = set(files) - {"t1", "t2", "mr", "ct", "mask", "labels"}
    if unknown:
        raise ValueError(f"unknown modality keys {sorted(unknown)}")
    vols = {k: read_nifti(p) for k, p in files.items()}
    pid = patient_id or (files.get("t2") or files.get("mr") or next(iter(files.values()))).parent.name
    return assemble(pid, vols)


# ----------------------------------------------------------------------------------------------------- layouts

def _subdirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "overview")


def detect_layout(root: str | os.PathLike, layout: str = "auto") -> str:
    """The layout of ``root`` (``layout="auto"``), or check that ``root`` matches the given layout."""
    root = Path(root)
    if layout != "auto" and layout not in LAYOUTS:
        raise DataError(root, f"unknown layout {layout!r}; choose auto or one of {', '.join(LAYOUTS)}")
    if not root.is_dir():
        raise DataError(root, "data folder not found")
    found = []
    if (root / phantom_mod.MANIFEST).is_file():
        found.append("phantom")
    if any(_MAT.match(p.name) for p in root.iterdir() if p.is_file()):
        found.append("syndiff_mat")
    subs = _subdirs(root)
    if any(_nifti(d, "t2") for d in subs):
        found.append("nifti")
    if any(_nifti(d, "mr") and _nifti(d, "ct") for d in subs):
        found.append("synthrad")
    if any(next(d.glob("*.[dD][cC][mM]"), None) is not None for d in subs):
        found.append("goldatlas")
    if layout == "auto":
        if not found:
            raise DataError(root, "no known dataset layout: expected <patient>/{t1,t2,ct}.nii.gz (nifti), "
                                  "<patient>/*.dcm (goldatlas), <ID>/{mr,ct}.nii.gz (synthrad), "
                                  "data_{train,val,test}_{T1,T2,CT}.mat (syndiff_mat) or a phantom.json")
        return "phantom" if "phantom" in found else found[0]
    ok = layout in found or (layout == "nifti" and "phantom" in found)
    if not ok:
        raise DataError(root, f"does not look like the {layout!r} layout "
                              f"(found: {', '.join(found) or 'nothing known'})")
    return layout


def _has_nifti(folder: Path) -> bool:
    return any(p.name.endswith(_NIFTI_EXT) and not p.name.startswith(".") for p in folder.iterdir() if p.is_file())


def list_patients(root: str | os.PathLike, layout: str = "auto") -> list[str]:
    """Patient ids of a folder, sorted by name (the phantom: in manifest order). In the NIfTI layouts every
    sub-folder that holds a NIfTI volume is a patient, whichever modalities it has (``load_patient`` names a missing
    one)."""
    root = Path(root)
    layout = detect_layout(root, layout)
    if layout == "phantom":
        manifest = phantom_mod.read_manifest(root)
        ids = [p["id"] for p in manifest["patients"]]
    elif layout == "syndiff_mat":
        raise DataError(root, "the syndiff_mat layout holds slice stacks, not patients; use read_syndiff_mat or "
                              "`mm2ct prepare`")
    elif layout in ("nifti", "synthrad"):   # any folder with a volume: one missing modality is load_patient's error
        ids = [d.name for d in _subdirs(root) if _has_nifti(d)]
    else:
        ids = [d.name for d in _subdirs(root) if next(d.glob("*.[dD][cC][mM]"), None) is not None]
    if not ids:
        raise DataError(root, f"no patients found for layout {layout!r}")
    return sorted(ids) if layout != "phantom" else ids


def load_patient(root: str | os.PathLike, patient: str, layout: str = "auto") -> Patient:
    """Read one patient of a dataset folder onto its T2 (or single-MR) grid; see the module docstring."""
    root = Path(root)
    layout = detect_layout(root, layout)
    folder = root / patient
    if not folder.is_dir():
        raise DataError(folder, f"patient {patient!r} not found in {root}")
    if layout in ("phantom", "nifti", "synthrad"):
        keys = ("mr", "ct", "mask") if layout == "synthrad" else ("t1", "t2", "ct", "mask", "labels")
        files = {k: _nifti(folder, k) for k in keys}
        required = ("mr", "ct") if layout == "synthrad" else ("t1", "t2", "ct")
        missing = [k for k in required if files[k] is None]
        if missing:
            raise DataError(folder, f"missing modality {', '.join(missing)}: no "
                                    f"{' or '.join(k + '.nii.gz' for k in missing)} (nor .nii) for patient "
                                    f"{patient!r}; every patient needs {', '.join(k + '.nii.gz' for k in required)}")
        return patient_from_files(files, patient)
    if layout == "goldatlas":
        return load_goldatlas_patient(folder)
    raise DataError(root, "the syndiff_mat layout holds slice stacks, not patients")


# ------------------------------------------------------------------------------------------------- Gold Atlas

def _series_choice(series: dict[str, dict[str, Any]], modality: str, pattern: str, exclude: str | None = None):
    """The matching series with the most slices (ties: lowest SeriesNumber)."""
    rx = re.compile(pattern, re.IGNORECASE)
    cands = [s for s in series.values() if s["modality"] == modality and rx.search(s["description"])
             and not (exclude and re.search(exclude, s["description"], re.IGNORECASE))]
    cands.sort(key=lambda s: (-len(s["files"]), s["number"]))
    return cands[0] if cands else None


def goldatlas_series(folder: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Group a Gold Atlas patient folder's ``*.dcm`` files by SeriesInstanceUID (headers only).

    Returns {uid: {"modality", "description", "number", "files"}}; a ``.dcm`` file that is not DICOM is an error.
    """
    folder = Path(folder)
    series: dict[str, dict[str, Any]] = defaultdict(lambda: {"files": []})
    for f in sorted(folder.glob("*.[dD][cC][mM]")):
        ds = read_dicom_header(f)
        uid = str(getattr(ds, "SeriesInstanceUID", "") or "")
        if not uid:
            raise DataError(f, "DICOM file without SeriesInstanceUID")
        s = series[uid]
        s.update(modality=str(getattr(ds, "Modality", "")), description=str(getattr(ds, "SeriesDescription", "")),
                 number=int(getattr(ds, "SeriesNumber", 0) or 0))
        s["files"].append(f)
    if not series:
        raise DataError(folder, "no .dcm files")
    return dict(series)


def load_goldatlas_patient(folder: str | os.PathLike) -> Patient:
    """One Gold Atlas patient: T2 (grid), T1 (resampled onto T2), CTtoMR (HU; the CT deformed onto T2)."""
    folder = Path(folder)
    series = goldatlas_series(folder)
    chosen = {
        "t2": _series_choice(series, "MR", r"t2"),
        "t1": _series_choice(series, "MR", r"t1", exclude=r"t2"),
        "ct": _series_choice(series, "CT", r"ct\s*to\s*mr"),
    }
    missing = [k for k, s in chosen.items() if s is None]
    if missing:
        have = "; ".join(f"{s['modality']} {s['description']!r} ({len(s['files'])} files)" for s in series.values())
        raise DataError(folder, f"missing modality {', '.join(missing)} (need MR series described 'T1' and 'T2' and "
                                f"a CT described 'CTtoMR'); series found: {have}")
    vols = {k: read_dicom_series(s["files"], f"{folder}/{s['description']!r}") for k, s in chosen.items()}
    p = assemble(folder.name, vols, resample_ct=True)
    p.notes.insert(0, "series: " + ", ".join(f"{k}={s['description']!r}" for k, s in chosen.items()))
    return p


# ---------------------------------------------------------------------------------------------- SynDiff .mat

def read_syndiff_mat(path: str | os.PathLike) -> np.ndarray:
    """SynDiff slice stack -> (N, H, W) float32 (HDF5 dataset ``data_fs`` stored (N, W, H); data.md §1.5)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        with h5py.File(path, "r") as f:
            if "data_fs" not in f:
                raise DataError(path, f"no dataset 'data_fs' (found {', '.join(f.keys()) or 'none'})")
            data = np.asarray(f["data_fs"], np.float32)
    except OSError as e:
        raise DataError(path, f"not an HDF5 (MATLAB v7.3) file ({e})") from None
    if data.ndim != 3:
        raise DataError(path, f"data_fs must be (N, W, H), got shape {data.shape}")
    if not np.isfinite(data).all():
        raise DataError(path, "data_fs contains NaN/Inf")
    return np.ascontiguousarray(data.transpose(0, 2, 1))


def write_syndiff_mat(path: str | os.PathLike, slices: np.ndarray) -> Path:
    """(N, H, W) slices in [0, 1] -> SynDiff .mat (HDF5 ``data_fs`` (N, W, H) float32), written atomically."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("data_fs", data=np.asarray(slices, np.float32).transpose(0, 2, 1))
    return path


def syndiff_mat_files(root: str | os.PathLike) -> dict[str, dict[str, Path]]:
    """{split: {"t1"|"t2"|"ct": path}} of a syndiff_mat folder; every split needs all three contrasts."""
    root = Path(root)
    out: dict[str, dict[str, Path]] = defaultdict(dict)
    for p in sorted(root.iterdir()):
        m = _MAT.match(p.name)
        if m:
            out[m.group(1).lower()][m.group(2).lower()] = p
    for split, files in out.items():
        missing = {"t1", "t2", "ct"} - set(files)
        if missing:
            names = "/".join(sorted(m.upper() for m in missing))
            raise DataError(root, f"split {split}: missing data_{split}_{names}.mat")
    return dict(out)


# ------------------------------------------------------------------------------------------------- workspace

def phantom_spec(cfg_data) -> dict[str, Any]:
    """The phantom folder a config asks for (compared with the folder's manifest)."""
    return phantom_mod.dataset_spec(cfg_data.n_patients, cfg_data.phantom_seed, cfg_data.phantom_grid,
                                    cfg_data.phantom_slices, cfg_data.phantom_t1_grid, cfg_data.phantom_labels)


def ensure_dataset(ws, progress: bool = True) -> Path:
    """The data folder of a workspace; generates the phantom there if ``ws.uses_phantom`` and it is missing/stale."""
    root = ws.data_root
    if not ws.uses_phantom:
        if not root.is_dir():
            raise DataError(root, "data folder not found (data.root / --data-dir / MM2CT_DATA_DIR)")
        return root
    spec = phantom_spec(ws.cfg.data)
    manifest = phantom_mod.read_manifest(root)
    if manifest is None or {k: manifest.get(k) for k in spec} != spec:
        phantom_mod.generate_dataset(root, spec["n_patients"], spec["seed"], spec["grid"], spec["n_slices"],
                                     spec["t1_grid"], spec["labels"], progress=progress)
    return root
