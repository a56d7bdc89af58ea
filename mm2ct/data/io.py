"""NIfTI and DICOM reading/writing with geometry checks (``docs/data.md`` §5).

* Every volume is returned as a ``Volume``: data in (X, Y, Z) order reoriented to the closest canonical RAS+
  orientation (axis swaps/flips only, ``nibabel.as_closest_canonical`` semantics), its RAS affine, and the native
  affine/header so that results can be written back on the input grid (``write_like``).
* DICOM series (pydicom): slices ordered by ImagePositionPatient projected on the slice normal (never by file
  name or InstanceNumber: Gold Atlas site-2 CT series run the other way, data.md §1.2), rescale slope/intercept
  applied (CT in HU), geometry from the headers, LPS -> RAS.
* Writes are atomic: a temporary file in the same folder, then ``os.replace``.
* Bad input raises ``DataError`` whose message starts with the file and says what is wrong.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from mm2ct.atomic import atomic_path

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class DataError(ValueError):
    """Bad input data; the message names the file (or folder) and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass
class Volume:
    """A 3-D image in canonical (X, Y, Z) RAS order plus what is needed to write results on its native grid."""
    data: np.ndarray               # (X, Y, Z), float32 unless read otherwise
    affine: np.ndarray             # (4, 4) voxel -> RAS mm of ``data``
    path: Path | None = None
    native_affine: np.ndarray | None = None   # affine of the file as stored
    header: Any = None             # nibabel header of the source (NIfTI) or None (DICOM)

    @property
    def spacing(self) -> np.ndarray:
        return np.sqrt((self.affine[:3, :3] ** 2).sum(0))

    def to_native(self, data: np.ndarray) -> np.ndarray:
        """Reorient an array on this volume's canonical grid back to the orientation of the source file."""
        if self.native_affine is None:
            return data
        back = ornt_transform(axcodes2ornt(("R", "A", "S")), io_orientation(self.native_affine))
        return apply_orientation(data, back)


def canonical(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorient (swap/flip axes) to the closest RAS+ orientation; returns (data, affine)."""
    ornt = io_orientation(affine)
    return apply_orientation(data, ornt), affine @ inv_ornt_aff(ornt, data.shape)


def check_volume(data: np.ndarray, path: str | os.PathLike, what: str = "volume") -> None:
    """Reject empty, non-finite and constant volumes (docs/contributing.md, Reliability)."""
    if data.size == 0 or 0 in data.shape:
        raise DataError(path, f"empty {what} (shape {data.shape})")
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        n = int((~np.isfinite(data)).sum())
        raise DataError(path, f"{what} contains {n} NaN/Inf voxels")
    lo, hi = data.min(), data.max()
    if lo == hi:
        raise DataError(path, f"constant {what} (every voxel is {lo})")


def check_affine(affine: np.ndarray, path: str | os.PathLike) -> None:
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-6:
        raise DataError(path, f"degenerate or non-finite affine:\n{np.array2string(affine, precision=3)}")


def check_hu(ct: np.ndarray, path: str | os.PathLike) -> None:
    """CT must be in Hounsfield units: air (about -1000 HU) present and no values beyond int16 HU conventions.

    Catches CT stored without its rescale intercept (0..4095), CT already normalised to [0, 1] or [-1, 1], and
    MR given in place of CT.  Scanner padding below -1024 (e.g. -2048, -3024 outside the FOV) is accepted.
    """
    lo, hi = float(ct.min()), float(ct.max())
    if lo < -3100 or hi > 32767:
        raise DataError(path, f"CT values {lo:.0f}..{hi:.0f} are outside any Hounsfield range")
    if lo > -500:
        raise DataError(path, f"CT does not look like Hounsfield units: minimum {lo:.4g} but air is about -1000 HU "
                              "(rescale intercept not applied, or CT already normalised?)")
    if hi < 0:
        raise DataError(path, f"CT does not look like Hounsfield units: maximum {hi:.4g} HU (no soft tissue)")


# ------------------------------------------------------------------------------------------------------ NIfTI

def read_nifti(path: str | os.PathLike, dtype=np.float32) -> Volume:
    """Read a 3-D NIfTI (scaling applied), reoriented to canonical RAS; checks geometry and values."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        img = nib.load(str(path))
    except Exception as e:  # noqa: BLE001 - nibabel raises many types for foreign files
        raise DataError(path, f"not a readable NIfTI file ({type(e).__name__}: {e})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError(path, f"not a NIfTI image (nibabel read it as {type(img).__name__})")
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32 if np.dtype(dtype).itemsize <= 4 else np.float64))
    except (EOFError, OSError, zlib.error, ValueError) as e:
        raise DataError(path, f"truncated or corrupt image data ({type(e).__name__}: {e})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(path, f"expected a 3-D volume, got shape {data.shape}")
    affine = img.affine.copy()
    check_affine(affine, path)
    check_volume(data, path)
    data, aff = canonical(data, affine)
    return Volume(np.ascontiguousarray(data.astype(dtype, copy=False)), aff, path, affine, img.header)


def write_nifti(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray, header=None,
                descrip: str | None = None) -> Path:
    """Write a NIfTI-1 file atomically; the on-disk dtype is ``data``'s (int16 CT stays int16, slope 1, inter 0).

    ``header``: a source header to copy (units, qform/sform codes, description); the affine given wins.
    """
    path = Path(path)
    data = np.asarray(data)
    if data.dtype == bool:
        data = data.astype(np.uint8)
    hdr = header.copy() if header is not None else None
    img = nib.Nifti1Image(data, affine, hdr)
    h = img.header
    h.set_data_dtype(data.dtype)
    h.set_slope_inter(1.0, 0.0)
    qcode = int(h["qform_code"]) if hdr is not None and int(h["qform_code"]) > 0 else 1
    scode = int(h["sform_code"]) if hdr is not None and int(h["sform_code"]) > 0 else 1
    img.set_qform(affine, code=qcode)
    img.set_sform(affine, code=scode)
    h.set_xyzt_units("mm", "sec")
    if descrip is not None:
        h["descrip"] = descrip[:79].encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def write_like(path: str | os.PathLike, data: np.ndarray, like: Volume, descrip: str | None = None) -> Path:
    """Write ``data`` (on ``like``'s canonical grid) in the native orientation, affine and header of ``like``."""
    native = like.native_affine if like.native_affine is not None else like.affine
    return write_nifti(path, like.to_native(np.asarray(data)), native, like.header, descrip)


# ------------------------------------------------------------------------------------------------------ DICOM

try:  # pydicom >= 3
    from pydicom.pixels import apply_modality_lut
except ImportError:  # pragma: no cover - pydicom 2.x
    from pydicom.pixel_data_handlers.util import apply_modality_lut


def read_dicom_header(path: str | os.PathLike):
    """Header only (no pixel data); DataError if the file is not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError) as e:
        raise DataError(path, f"not a readable DICOM file ({type(e).__name__}: {e})") from None


def _geometry(ds, path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row direction, column direction, pixel spacing (row, col)) of one slice, with checks."""
    for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if tag not in ds:
            raise DataError(path, f"DICOM slice without {tag}: cannot place it in space")
    iop = np.asarray(ds.ImageOrientationPatient, float)
    if iop.shape != (6,):
        raise DataError(path, f"ImageOrientationPatient must have 6 values, got {list(iop)}")
    return iop[:3], iop[3:], np.asarray(ds.PixelSpacing, float)


def read_dicom_series(files: Sequence[str | os.PathLike], label: str | None = None) -> Volume:
    """Read one single-frame DICOM series into a canonical RAS ``Volume`` (float32; CT in HU).

    Slices are sorted by position along the slice normal; duplicates and uneven spacing (> 10 %) are errors
    because one affine cannot describe them.  ``label`` names the series in error messages (default: the folder).
    """
    import pydicom

    files = [Path(f) for f in files]
    if not files:
        raise DataError(label or ".", "empty DICOM series")
    where = label or str(files[0].parent)
    slices = []
    for f in files:
        try:
            ds = pydicom.dcmread(str(f))
        except Exception as e:  # noqa: BLE001
            raise DataError(f, f"not a readable DICOM file ({type(e).__name__}: {e})") from None
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            raise DataError(f, "multi-frame (enhanced) DICOM is not supported; convert it to NIfTI first")
        row, col, _ = _geometry(ds, f)
        slices.append((f, ds, row, col))
    row0, col0 = slices[0][2], slices[0][3]
    for f, _, row, col in slices[1:]:
        if not (np.allclose(row, row0, atol=1e-4) and np.allclose(col, col0, atol=1e-4)):
            raise DataError(f, f"slice orientation differs from the rest of series {where}")
    normal = np.cross(row0, col0)
    pos = np.array([np.dot(np.asarray(ds.ImagePositionPatient, float), normal) for _, ds, _, _ in slices])
    order = np.argsort(pos, kind="stable")
    slices = [slices[i] for i in order]
    pos = pos[order]
    if len(pos) > 1:
        gaps = np.diff(pos)
        if gaps.min() < 1e-3:
            i = int(np.argmin(gaps))
            raise DataError(slices[i + 1][0], f"two slices at the same position ({pos[i]:.3f} mm along the normal) "
                                              f"in series {where}: mixed series or duplicate files")
        step = float(np.median(gaps))
        if np.abs(gaps - step).max() > 0.1 * step:
            raise DataError(where, f"uneven slice spacing ({gaps.min():.3g}..{gaps.max():.3g} mm): missing slices?")
    f0, ds0 = slices[0][0], slices[0][1]
    rows, cols = int(ds0.Rows), int(ds0.Columns)
    vol = np.empty((cols, rows, len(slices)), np.float32)                 # (X=column, Y=row, Z=slice)
    for k, (f, ds, _, _) in enumerate(slices):
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise DataError(f, f"slice size {ds.Rows}x{ds.Columns} differs from {rows}x{cols} in series {where}")
        try:
            px = apply_modality_lut(ds.pixel_array, ds)
        except Exception as e:  # noqa: BLE001 - decoders raise many types
            raise DataError(f, f"cannot decode pixel data ({type(e).__name__}: {e})") from None
        vol[:, :, k] = np.asarray(px, np.float32).T
    _, _, ps = _geometry(ds0, f0)
    ipp0 = np.asarray(ds0.ImagePositionPatient, float)
    if len(slices) > 1:
        slice_vec = (np.asarray(slices[-1][1].ImagePositionPatient, float) - ipp0) / (len(slices) - 1)
    else:
        thick = float(getattr(ds0, "SpacingBetweenSlices", 0) or getattr(ds0, "SliceThickness", 0) or 1.0)
        slice_vec = normal * thick
    lps = np.eye(4)
    lps[:3, 0] = row0 * ps[1]          # column index moves along the row direction by the column spacing
    lps[:3, 1] = col0 * ps[0]          # row index moves along the column direction by the row spacing
    lps[:3, 2] = slice_vec
    lps[:3, 3] = ipp0
    ras = LPS_TO_RAS @ lps
    check_affine(ras, where)
    check_volume(vol, where, "series")
    data, aff = canonical(vol, ras)
    return Volume(np.ascontiguousarray(data), aff, Path(where), ras, None)


def write_dicom_series(folder: str | os.PathLike, data: np.ndarray, affine: np.ndarray, modality: str,
                       description: str, patient_id: str = "ANON", series_number: int = 1,
                       prefix: str = "IM", reverse_files: bool = False, slope: float = 1.0,
                       intercept: float | None = None) -> list[Path]:
    """Write a volume (X, Y, Z) on a RAS ``affine`` as a single-frame DICOM series (int16 pixels + rescale).

    Minimal CT/MR Image Storage objects (geometry, rescale, series identity) for tests and exchange; files are
    named ``<prefix>.<n>.dcm`` with n counting up the slices, or down when ``reverse_files`` (a site-2-like order).
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if intercept is None:
        intercept = -1024.0 if modality == "CT" else 0.0
    lps = LPS_TO_RAS @ affine
    sp = np.sqrt((lps[:3, :3] ** 2).sum(0))
    row_dir, col_dir = lps[:3, 0] / sp[0], lps[:3, 1] / sp[1]
    series_uid, study_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    stored = np.rint((np.asarray(data, np.float64) - intercept) / slope)
    if stored.min() < -32768 or stored.max() > 32767:
        raise ValueError(f"{folder}: values do not fit int16 with slope {slope} and intercept {intercept}")
    n = data.shape[2]
    paths = []
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesDescription, ds.SeriesNumber = modality, description, series_number
        ds.PatientID, ds.PatientName = patient_id, patient_id
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [float(v) for v in (lps @ [0, 0, k, 1])[:3]]
        ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [float(sp[1]), float(sp[0])]
        ds.SliceThickness = float(sp[2])
        ds.Rows, ds.Columns = data.shape[1], data.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T.astype("<i2")).tobytes()
        number = n - k if reverse_files else k + 1
        path = folder / f"{prefix}.{number}.dcm"
        with atomic_path(path) as tmp:
            if int(pydicom.__version__.split(".")[0]) >= 3:
                ds.save_as(str(tmp), enforce_file_format=True)
            else:  # pragma: no cover - pydicom 2.x
                ds.is_little_endian, ds.is_implicit_VR = True, False
                ds.save_as(str(tmp), write_like_original=False)
        paths.append(path)
    return paths
