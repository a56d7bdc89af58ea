"""Patient-level splits, the on-disk slice cache and 2-D slice datasets (``docs/data.md`` §1.5, method.md §1.3).

Cache layout (``ensure_cache(ws)`` builds it in ``ws.cache_dir``; ``mm2ct prepare`` from the command line):

    meta.json              key (hash of the config's data section + source), normalisers, per-patient source grid,
                           kept slices, per-volume scales and slice geometry (what inference needs to invert)
    splits.csv             patient,split
    <split>/<key>.npy      (N, S, S) slices: MR keys and ct float32 in [-1, 1], mask uint8 in {0, 1}
    <split>/index.csv      row,patient,slice (slice = z index on the patient's T2 grid)

Slices: every axial slice whose body mask is not empty, or the ``slices_per_patient`` central ones
(method.md open choice 1); geometry per ``preprocess.SliceGeometry`` (zero-pad, resample larger grids to fit).
Normalisation: MR per ``data.mr_norm`` (the global maximum is fitted on the training patients only), CT per
``data.ct_norm`` (default: the HU window, an exact inverse with ``unit_to_hu``).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from mm2ct.atomic import atomic_path, sweep_stale
from mm2ct.data import sources
from mm2ct.data.io import DataError
from mm2ct.data.preprocess import IntensityNormaliser, SliceGeometry

CACHE_VERSION = 1
SPLITS = ("train", "val", "test")


# ------------------------------------------------------------------------------------------------------ splits

def make_split(patients: list[str], counts: tuple[int, int, int], seed: int) -> dict[str, str]:
    """Patient -> split: a seeded shuffle of the sorted ids, then the first counts[0] train, ... (stable per seed)."""
    ids = sorted(patients)
    if len(set(ids)) != len(ids):
        dup = sorted({p for p in ids if ids.count(p) > 1})
        raise DataError("patients", f"patient listed twice: {', '.join(dup)}")
    if sum(counts) != len(ids):
        raise ValueError(f"split {tuple(counts)} needs {sum(counts)} patients, got {len(ids)}")
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    out, start = {}, 0
    for name, n in zip(SPLITS, counts):
        out.update({p: name for p in order[start:start + n]})
        start += n
    return out


def write_split_csv(path: str | os.PathLike, split: dict[str, str]) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patient", "split"])
        for name in SPLITS:
            for p in sorted(k for k, v in split.items() if v == name):
                w.writerow([p, name])
    return path


def read_split_csv(path: str | os.PathLike) -> dict[str, str]:
    """patient,split CSV -> {patient: split}; a patient listed twice or an unknown split is an error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "split CSV not found")
    out: dict[str, str] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"patient", "split"} <= set(reader.fieldnames):
            raise DataError(path, f"expected columns patient,split, got {reader.fieldnames}")
        for i, row in enumerate(reader, 2):
            p, s = row["patient"].strip(), row["split"].strip()
            if p in out:
                raise DataError(path, f"line {i}: patient {p!r} listed twice")
            if s not in SPLITS:
                raise DataError(path, f"line {i}: unknown split {s!r} (train, val or test)")
            out[p] = s
    return out


def goldatlas_split_csv() -> Path:
    """The committed Gold Atlas split (first 15 subjects by folder name, 9/2/4; data.md §1.5)."""
    return Path(str(resources.files("mm2ct.data") / "goldatlas_split.csv"))


def choose_split(patients: list[str], cfg_data, layout: str) -> dict[str, str]:
    """The split a config asks for: ``split_csv``, else the committed Gold Atlas split when it fits, else seeded."""
    if cfg_data.split_csv:
        split = read_split_csv(cfg_data.split_csv)
        missing = sorted(set(split) - set(patients))
        if missing:
            raise DataError(cfg_data.split_csv, f"patients not in the data folder: {', '.join(missing)}")
        return split
    if layout == "goldatlas":
        split = read_split_csv(goldatlas_split_csv())
        counts = tuple(sum(v == s for v in split.values()) for s in SPLITS)
        if set(split) == set(patients) and counts == tuple(cfg_data.split):
            return split
    return make_split(patients, tuple(cfg_data.split), cfg_data.split_seed)


def select_slices(mask: np.ndarray, n: int | None) -> list[int]:
    """z indices with body in the mask; with ``n``, the n central ones of those."""
    z = np.flatnonzero(mask.reshape(-1, mask.shape[2]).any(0))
    if n is not None and len(z) > n:
        start = (len(z) - n) // 2
        z = z[start:start + n]
    return [int(k) for k in z]


# ------------------------------------------------------------------------------------------------------- cache

def _data_dict(cfg_data) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(cfg_data)))


def cache_key(cfg_data, root: str | os.PathLike) -> str:
    """Hash of the config's data section, the resolved source folder and the cache format."""
    blob = json.dumps(dict(version=CACHE_VERSION, data=_data_dict(cfg_data), source=str(Path(root).resolve())),
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_meta(cache_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(cache_dir) / "meta.json"
    if not path.is_file():
        raise DataError(cache_dir, "not a slice cache (no meta.json); build it with ensure_cache or `mm2ct prepare`")
    try:
        with open(path) as f:
            meta = json.load(f)
    except ValueError as e:
        raise DataError(path, f"corrupt ({e}); build the cache again (`mm2ct prepare --overwrite`)") from None
    if not isinstance(meta, dict):
        raise DataError(path, "corrupt (not a JSON object); build the cache again (`mm2ct prepare --overwrite`)")
    return meta


def load_normalisers(cache_dir: str | os.PathLike) -> dict[str, IntensityNormaliser]:
    """The fitted normalisers of a cache ({modality: IntensityNormaliser}), e.g. for inference on a new patient."""
    return {k: IntensityNormaliser.from_dict(v) for k, v in load_meta(cache_dir)["normalisers"].items()}


def patient_slices(patient: sources.Patient, image_size: int,
                   z: list[int]) -> tuple[dict[str, np.ndarray], SliceGeometry]:
    """Raw (unnormalised) slices of a patient: {key: (len(z), S, S)} (MR, CT in HU, mask) and the geometry."""
    geom = SliceGeometry(patient.shape, image_size)
    out = {}
    for key, vol in patient.volumes.items():
        if key == "labels":
            continue
        cval = -1024.0 if key == "ct" else 0.0
        s = geom.to_slices(vol[:, :, z], cval=cval) if z else np.zeros((0, image_size, image_size), np.float32)
        out[key] = (s > 0.5).astype(np.uint8) if key == "mask" else s
    return out, geom


def is_cache(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a slice cache mm2ct built: a folder whose ``meta.json`` carries the cache's key and format
    version (the only kind of folder ``build_cache`` replaces without being asked)."""
    meta = Path(path) / "meta.json"
    try:
        with open(meta) as f:
            m = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(m, dict) and "key" in m and "version" in m


def check_cache_target(root: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse a cache folder ``out`` that would destroy data: the dataset ``root`` itself, a folder inside it or one
    that holds it (always), and anything but a previous cache or an empty folder unless ``overwrite``."""
    root, out = Path(root), Path(out)
    src, dst = root.resolve(), out.resolve()
    if dst == src or src in dst.parents:
        raise DataError(out, f"is the dataset folder {root} or inside it: the slice cache must live outside the "
                             f"dataset; choose another --out")
    if dst in src.parents:
        raise DataError(out, f"holds the dataset folder {root}: replacing it would delete the data; choose "
                             f"another --out")
    if not (out.exists() or out.is_symlink()) or is_cache(out):
        return
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        return
    if not overwrite:
        what = "a folder" if out.is_dir() else "a file"
        raise DataError(out, f"exists and is {what} that is not an mm2ct slice cache (no meta.json with its key and "
                             f"version); nothing was changed: choose another --out, or pass --overwrite "
                             f"(build_cache(overwrite=True)) to replace it")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def build_cache(root: str | os.PathLike, out: str | os.PathLike, cfg_data, layout: str = "auto",
                key: str | None = None, progress: bool = True, log: Callable[[str], None] | None = None,
                overwrite: bool = False) -> Path:
    """Build the slice cache of the dataset at ``root`` into ``out`` (atomically: a temporary folder, then rename).

    ``out`` may hold a previous cache (replaced) or nothing; anything else is refused unless ``overwrite``, and the
    dataset folder (or a folder inside or around it) always is (``check_cache_target``). Temporary folders of
    builds that were killed (``.NAME.tmp-PID``) are swept first."""
    root, out = Path(root), Path(out)
    check_cache_target(root, out, overwrite)
    layout = sources.detect_layout(root, layout)
    key = key or cache_key(cfg_data, root)
    if out.parent.is_dir():
        sweep_stale(out.parent)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")     # the pattern sweep_stale knows
    old = tmp.with_name(tmp.name + ".old")          # .NAME.tmp-PID.old: swept like the temporary folder
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "raw").mkdir(parents=True)
    try:
        if layout == "syndiff_mat":
            meta = _build_from_mat(root, tmp, cfg_data)
        else:
            meta = _build_from_volumes(root, tmp, cfg_data, layout, progress, log)
        meta.update(key=key, version=CACHE_VERSION, layout=layout, source=str(root.resolve()),
                    data=_data_dict(cfg_data))
        shutil.rmtree(tmp / "raw")
        with open(tmp / "meta.json", "w") as f:
            json.dump(meta, f, indent=1)
        out.parent.mkdir(parents=True, exist_ok=True)
        check_cache_target(root, out, overwrite)     # nothing appeared there meanwhile
        if out.exists() or out.is_symlink():
            os.replace(out, old)
        os.replace(tmp, out)
        _remove(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _build_from_volumes(root: Path, tmp: Path, cfg_data, layout: str, progress: bool, log) -> dict[str, Any]:
    from tqdm.auto import tqdm

    ids = sources.list_patients(root, layout)
    if len(ids) < cfg_data.n_patients:
        raise DataError(root, f"data.n_patients = {cfg_data.n_patients} but only {len(ids)} patients found")
    ids = ids[:cfg_data.n_patients]                      # the first n by folder name (data.md §1.5)
    split = choose_split(ids, cfg_data, layout)
    ids = [p for p in ids if p in split]
    mr_keys = sources.MR_KEYS[layout]
    mr_norm = {k: IntensityNormaliser.for_mr(cfg_data) for k in mr_keys}
    ct_norm = IntensityNormaliser.for_ct(cfg_data)
    patients: dict[str, dict[str, Any]] = {}
    train_max: dict[str, list[float]] = {k: [] for k in (*mr_keys, "ct")}
    for pid in tqdm(ids, desc="prepare: read patients", unit="patient", disable=not progress):
        p = sources.load_patient(root, pid, layout)
        missing = [k for k in (*mr_keys, "ct") if k not in p.volumes]
        if missing:
            raise DataError(root / pid, f"missing modality {', '.join(missing)}")
        z = select_slices(p.volumes["mask"], cfg_data.slices_per_patient)
        if not z:
            raise DataError(root / pid, "the body mask is empty on every slice")
        scales = {k: mr_norm[k].scale(p.volumes[k], p.volumes["mask"]) for k in mr_keys}
        scales["ct"] = ct_norm.scale(p.volumes["ct"], p.volumes["mask"])
        if split[pid] == "train":
            for k in (*mr_keys, "ct"):
                train_max[k].append(mr_norm.get(k, ct_norm).volume_max(p.volumes[k], scales[k]))
        raw, geom = patient_slices(p, cfg_data.image_size, z)
        np.savez(tmp / "raw" / f"{pid}.npz", **raw)
        patients[pid] = dict(split=split[pid], slices=z, shape=list(p.shape), affine=p.affine.tolist(),
                             native_affine=np.asarray(p.reference.native_affine).tolist(),
                             scales=scales, geometry=geom.to_dict(),
                             paths={k: str(v) for k, v in p.paths.items()}, notes=p.notes)
        if log:
            log(f"{pid}: {len(z)} slices, {'; '.join(p.notes) or 'no notes'}")
    if not any(split[p] == "train" for p in ids):
        raise DataError(root, "no training patient to fit the normalisation on")
    for k, norm in (*mr_norm.items(), ("ct", ct_norm)):
        norm.fit(train_max[k])
    normalisers = {**mr_norm, "ct": ct_norm}
    for name in SPLITS:
        members = [p for p in ids if split[p] == name]
        _write_split(tmp, name, members, patients, normalisers, (*mr_keys, "ct", "mask"), cfg_data.image_size)
    write_split_csv(tmp / "splits.csv", split)
    if ct_norm.method == "syndiff":   # inference on a new patient: the mean training CT scale (no CT to measure)
        ct_norm_meta = dict(ct_norm.to_dict(), inference_scale=float(np.mean(
            [patients[p]["scales"]["ct"] for p in ids if split[p] == "train"])))
    else:
        ct_norm_meta = ct_norm.to_dict()
    return dict(mr_keys=list(mr_keys), image_size=cfg_data.image_size, patients=patients,
                normalisers={**{k: n.to_dict() for k, n in mr_norm.items()}, "ct": ct_norm_meta},
                counts={s: sum(v == s for v in split.values()) for s in SPLITS})


def _write_split(tmp: Path, name: str, members: list[str], patients, normalisers, keys, size: int) -> None:
    folder = tmp / name
    folder.mkdir()
    n = sum(len(patients[p]["slices"]) for p in members)
    arrays = {k: np.lib.format.open_memmap(folder / f"{k}.npy", mode="w+", dtype=np.uint8 if k == "mask"
                                           else np.float32, shape=(n, size, size)) for k in keys}
    rows, i = [], 0
    for pid in members:
        raw = np.load(tmp / "raw" / f"{pid}.npz")
        m = len(patients[pid]["slices"])
        for k in keys:
            arrays[k][i:i + m] = raw[k] if k == "mask" else normalisers[k].apply(raw[k], patients[pid]["scales"][k])
        rows += [(i + j, pid, z) for j, z in enumerate(patients[pid]["slices"])]
        i += m
    for a in arrays.values():
        a.flush()
    del arrays
    _write_index(folder / "index.csv", rows)


def _write_index(path: Path, rows) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "patient", "slice"])
        w.writerows(rows)


def _build_from_mat(root: Path, tmp: Path, cfg_data) -> dict[str, Any]:
    """SynDiff .mat stacks ([0, 1], already normalised) -> cache; each split is one pseudo-patient ``mat_<split>``."""
    files = sources.syndiff_mat_files(root)
    counts = {}
    for name in SPLITS:
        folder = tmp / name
        folder.mkdir()
        if name not in files:
            empty = np.zeros((0, cfg_data.image_size, cfg_data.image_size), np.float32)
            arrays = {k: empty for k in ("t1", "t2", "ct")}
        else:
            arrays = {k: sources.read_syndiff_mat(p) for k, p in files[name].items()}
        sizes = {a.shape for a in arrays.values()}
        if len(sizes) != 1:
            raise DataError(root, f"split {name}: T1, T2 and CT stacks differ in shape ({sorted(sizes)})")
        n = next(iter(sizes))[0]
        for k, a in arrays.items():
            geom = SliceGeometry((a.shape[2], a.shape[1], n), cfg_data.image_size)
            vol = a[:, ::-1, ::-1].transpose(2, 1, 0)            # (N, H, W) slices -> (X, Y, Z) as to_slices expects
            np.save(folder / f"{k}.npy", geom.to_slices(vol * 2.0 - 1.0, cval=-1.0))
        np.save(folder / "mask.npy", (np.load(folder / "ct.npy") > -0.99).astype(np.uint8))   # CT above air
        _write_index(folder / "index.csv", [(i, f"mat_{name}", i) for i in range(n)])
        counts[name] = n
    return dict(mr_keys=["t1", "t2"], image_size=cfg_data.image_size, patients={}, counts=counts,
                normalisers={k: dict(method="syndiff_mat") for k in ("t1", "t2", "ct")})


def ensure_cache(ws, progress: bool = True) -> Path:
    """The slice cache of a workspace: built in ``ws.cache_dir`` when missing or built from another data config."""
    root = sources.ensure_dataset(ws, progress=progress)
    key = cache_key(ws.cfg.data, root)
    if is_cache(ws.cache_dir) and load_meta(ws.cache_dir).get("key") == key:
        return ws.cache_dir
    return build_cache(root, ws.cache_dir, ws.cfg.data, ws.cfg.data.layout, key=key, progress=progress)


def export_syndiff_mat(cache_dir: str | os.PathLike, out: str | os.PathLike) -> list[Path]:
    """Write a cache as SynDiff's ``data_{split}_{T1,T2,CT}.mat`` ([-1, 1] -> [0, 1]) for the original code."""
    cache_dir, out = Path(cache_dir), Path(out)
    written = []
    for name in SPLITS:
        for k in load_meta(cache_dir)["mr_keys"] + ["ct"]:
            x = np.load(cache_dir / name / f"{k}.npy")
            written.append(sources.write_syndiff_mat(out / f"data_{name}_{k.upper()}.mat", (x + 1.0) / 2.0))
    return written


# ----------------------------------------------------------------------------------------------------- dataset

_REBUILD = "build the cache again (`mm2ct prepare --overwrite`)"


def _load_array(path: Path) -> np.ndarray:
    """A cache array, memory-mapped; a file that is not one is a DataError naming it (a missing one: OSError)."""
    try:
        return np.load(path, mmap_mode="r")
    except ValueError as e:
        raise DataError(path, f"unreadable ({e}); {_REBUILD}") from None


class SliceDataset(Dataset):
    """2-D slices of one split of a cache.

    Items: {"t1", "t2" (or "mr"), "ct", "mask": (1, S, S) float32 tensors, "patient": str, "slice": int}; images in
    [-1, 1], mask in {0, 1}.  With ``paired=False`` (SynDiff's unpaired emulation, method.md open choice 5) "ct",
    "mask_ct", "patient_ct", "slice_ct" come from an independent shuffle of the split's slices (generally another
    patient); ``set_epoch`` draws a new shuffle.  Arrays are memory-mapped.
    """

    def __init__(self, cache_dir: str | os.PathLike, split: str, paired: bool = True, seed: int = 0):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        self.cache_dir = Path(cache_dir)
        self.meta = load_meta(self.cache_dir)
        self.split, self.paired, self.seed = split, paired, seed
        folder = self.cache_dir / split
        self.mr_keys = tuple(self.meta["mr_keys"])
        self.arrays = {k: _load_array(folder / f"{k}.npy") for k in (*self.mr_keys, "ct", "mask")}
        try:
            with open(folder / "index.csv", newline="") as f:
                rows = list(csv.DictReader(f))
            self.patients = [r["patient"] for r in rows]
            self.slices = [int(r["slice"]) for r in rows]
        except (KeyError, ValueError, TypeError) as e:
            raise DataError(folder / "index.csv", f"unreadable ({type(e).__name__}: {e}); {_REBUILD}") from None
        lengths = {len(a) for a in self.arrays.values()} | {len(self.patients)}
        if len(lengths) != 1:
            raise DataError(folder, f"arrays and index.csv disagree on the number of slices ({sorted(lengths)}); "
                                    f"{_REBUILD}")
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Unpaired mode: a new CT shuffle for this epoch (deterministic in (seed, epoch))."""
        n = len(self.patients)
        self.ct_index = np.arange(n) if self.paired else np.random.default_rng([self.seed, epoch]).permutation(n)

    def __len__(self) -> int:
        return len(self.patients)

    def _img(self, key: str, i: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.arrays[key][i], np.float32))[None]   # (1, S, S)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {k: self._img(k, i) for k in self.mr_keys}
        item["mask"] = self._img("mask", i)
        item["patient"], item["slice"] = self.patients[i], self.slices[i]
        j = int(self.ct_index[i])
        item["ct"] = self._img("ct", j)
        if not self.paired:
            item["mask_ct"] = self._img("mask", j)
            item["patient_ct"], item["slice_ct"] = self.patients[j], self.slices[j]
        return item


# --------------------------------------------------------------------------------------------------------- CLI

def configure(parser) -> None:
    parser.add_argument("--profile", default="smoke", help="profile (smoke, demo, paper or a YAML path)")
    parser.add_argument("--source", default=None,
                        help="dataset folder (default: the profile's data folder; the phantom is generated if needed)")
    parser.add_argument("--layout", default=None, choices=("auto", *sources.LAYOUTS),
                        help="dataset layout (default: the profile's data.layout, normally auto)")
    parser.add_argument("--out", default=None,
                        help="cache folder (default: data/cache/<profile>/ in the work directory); it may hold a "
                             "previous cache, which is replaced, or nothing")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out even when it is not a previous mm2ct cache (never the dataset itself)")
    parser.add_argument("--export-mat", default=None, metavar="DIR",
                        help="also write SynDiff data_{split}_{T1,T2,CT}.mat files to DIR")


def run(args) -> int:
    from mm2ct.workspace import resolve

    overrides = {"data": {"layout": args.layout}} if args.layout else {}
    ws = resolve(args.profile, data_dir=args.source, **overrides)
    if args.out:
        root = sources.ensure_dataset(ws)
        out = build_cache(root, Path(args.out), ws.cfg.data, ws.cfg.data.layout, log=print, overwrite=args.overwrite)
    else:
        out = ensure_cache(ws)
    meta = load_meta(out)
    print(f"slice cache {out}: " + ", ".join(f"{s} {n}" for s, n in meta["counts"].items())
          + f" ({'slices' if meta['layout'] == 'syndiff_mat' else 'patients'}), {meta['image_size']} px, layout "
          f"{meta['layout']}")
    if args.export_mat:
        for p in export_syndiff_mat(out, args.export_mat):
            print(f"wrote {p}")
    return 0
