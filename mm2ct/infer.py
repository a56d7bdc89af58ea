"""Synthetic CT for one patient: T1 / T2 NIfTI volumes -> translator -> CT NIfTI in HU on the input grid.

    mm2ct translate --t1 T1.nii.gz --t2 T2.nii.gz --checkpoint runs/demo/mm2ct/best.pt -o sCT.nii.gz
    mm2ct translate --t2 T2.nii.gz --checkpoint runs/demo/syndiff_t2/best.pt -o sCT.nii.gz --samples 8

    img = translate_volume("runs/demo/mm2ct/best.pt", t1="T1.nii.gz", t2="T2.nii.gz", out="sCT.nii.gz")

Steps (the inverse of the slice cache, ``mm2ct.data.slices``, so inference sees what training saw):

1. read the volumes (``mm2ct.data.io.read_nifti``: canonical RAS; non-NIfTI, truncated, NaN/Inf, empty or
   constant volumes are ``DataError``s naming the file) and put them on one grid (``sources.patient_from_files``:
   T2 defines it, T1 is resampled onto it by its affine when the grids differ, and refused when they barely
   overlap); a single-modality checkpoint reads its one volume on its own grid;
2. normalise each MR volume with the training normaliser (``preprocess.IntensityNormaliser``: the per-volume
   scale is measured on this patient, the dataset constant - SynDiff's global maximum over the training volumes -
   comes from the checkpoint, or else from the slice cache the checkpoint was trained on);
3. axial slices zero-padded (larger grids resampled down) to the model's image size (``preprocess.SliceGeometry``),
   translated in batches (EMA weights, fixed seed ``eval.seed``; a progress bar);
4. ``--samples K``: K diffusion samples per slice; the output is their mean (in HU) and their per-voxel standard
   deviation (HU) is written next to it (``<name>_std.nii.gz``);
5. slices restacked and mapped back exactly to the input grid, CT normaliser inverted (HU), clipped to
   [-1024, 3071], rounded to int16 and written with the input's affine and header (qform/sform codes kept, slope 1,
   intercept 0; ``io.write_like``).  Every output is written under a temporary name and renamed only after all of
   them succeeded: a failure leaves no output file.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mm2ct.atomic import sweep_stale

HU_CLIP = (-1024.0, 3071.0)       # int16 HU range of the SynthRAD releases (docs/data.md §2.2, §5)
_NIFTI_EXT = (".nii.gz", ".nii")


def spread_path(out: str | os.PathLike) -> Path:
    """``sCT.nii.gz`` -> ``sCT_std.nii.gz`` (the per-voxel spread of ``--samples``)."""
    out = Path(out)
    ext = next((e for e in _NIFTI_EXT if out.name.endswith(e)), "")
    return out.with_name(out.name[:len(out.name) - len(ext)] + "_std" + ext)


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: equal once resolved (symlinks followed), or hard links of one file."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:                     # one of them does not exist
        return False


def _check_outputs(targets: list[Path], inputs: dict[str, Path]) -> None:
    """Refuse a non-NIfTI output name and any file to be written that is one of ``inputs`` ({what: path})."""
    if not targets[0].name.endswith(_NIFTI_EXT):
        raise ValueError(f"{targets[0]}: the output must be a NIfTI file name ending in .nii.gz or .nii")
    for out in targets:
        for what, p in inputs.items():
            if _same_file(out, p):
                raise ValueError(f"{out}: the output would overwrite the {what} {p}; choose another -o/--output"
                                 + (" (the spread map of --samples goes to <output>_std)" if out != targets[0] else ""))


def load_normalisers(ckpt: dict, cfg, checkpoint: Path, cache: str | os.PathLike | None = None):
    """({modality or "ct": IntensityNormaliser}, CT scale, where they came from) for a checkpoint.

    Order: the checkpoint's own ``normalisers`` (the slice cache's ``meta.json`` entry, if training stored it);
    ``cache`` (a slice-cache folder); the cache next to the run (``<root>/data/cache/<profile>`` for
    ``<root>/runs/<profile>/<model>/best.pt``) when its data config equals the checkpoint's; else the config's
    normalisers when they need no dataset constant (robust MR, windowed CT).  Anything else is an error.
    """
    from mm2ct.data.io import DataError
    from mm2ct.data.preprocess import IntensityNormaliser
    from mm2ct.data.slices import load_meta

    raw, where = ckpt.get("normalisers"), f"checkpoint {checkpoint}"
    tried = []
    if raw is None:
        candidates = [Path(cache)] if cache else []
        if not cache and len(checkpoint.resolve().parents) > 3:
            candidates.append(checkpoint.resolve().parents[3] / "data" / "cache" / cfg.profile)
        for c in candidates:
            tried.append(str(c))
            try:
                meta = load_meta(c)
            except DataError:
                if cache:
                    raise
                continue
            if cache or meta.get("data") == ckpt["config"]["data"]:
                raw, where = meta.get("normalisers"), f"slice cache {c}"
                break
    if raw is None:
        needs_fit = cfg.data.mr_norm == "syndiff" or cfg.data.ct_norm == "syndiff"
        if needs_fit:
            raise ValueError(
                f"{checkpoint}: the intensity normalisation of this model needs a constant fitted on its training "
                f"data (data.mr_norm = {cfg.data.mr_norm!r}, data.ct_norm = {cfg.data.ct_norm!r}: SynDiff's global "
                f"maximum), which the checkpoint does not carry, and no matching slice cache was found "
                f"(looked in: {', '.join(tried) or 'nowhere'}); pass the cache folder the model was trained on "
                f"(--cache data/cache/<profile>)")
        norms = {k: IntensityNormaliser.for_mr(cfg.data) for k in ("t1", "t2", "mr")}
        return {**norms, "ct": IntensityNormaliser.for_ct(cfg.data)}, 1.0, "the checkpoint's config"
    bad = [k for k, v in raw.items() if v.get("method") not in ("syndiff", "robust", "window")]
    if bad:
        raise ValueError(f"{checkpoint}: trained on data without a known volume normalisation ({where}: "
                         f"{raw[bad[0]]}); NIfTI inference is not possible for it")
    ct = dict(raw["ct"])
    ct_scale = float(ct.pop("inference_scale", 1.0))
    norms = {k: IntensityNormaliser.from_dict(v) for k, v in raw.items() if k != "ct"}
    norms["ct"] = IntensityNormaliser.from_dict(ct)
    return norms, ct_scale, where


def _read_patient(t1: Path | None, t2: Path | None, sources: tuple[str, ...], checkpoint: Path, model: str,
                  log) -> tuple[Any, dict[str, np.ndarray], np.ndarray]:
    """(reference Volume to write like, {source: volume on the reference grid}, body mask from the MR)."""
    from mm2ct.data.sources import patient_from_files

    given = {"t1": t1, "t2": t2}
    missing = [s for s in sources if given[s] is None]
    if missing:
        raise ValueError(f"{checkpoint}: model {model!r} translates {' + '.join(s.upper() for s in sources)} -> CT; "
                         f"missing {', '.join('--' + s for s in missing)} (the "
                         f"{' and '.join(s.upper() for s in missing)} NIfTI volume)")
    unused = [s for s, p in given.items() if p is not None and s not in sources]
    if unused:
        log(f"note: model {model!r} uses only {', '.join(s.upper() for s in sources)}; ignoring "
            f"{', '.join(f'--{s} {given[s]}' for s in unused)}")
    if len(sources) == 1:     # a single MR defines the grid itself
        patient = patient_from_files({"mr": given[sources[0]]})
        vols = {sources[0]: patient.volumes["mr"]}
    else:
        patient = patient_from_files({s: given[s] for s in sources})
        vols = {s: patient.volumes[s] for s in sources}
    for note in patient.notes:
        if "resampled" in note:
            log(f"note: {note}")
    return patient.reference, vols, patient.volumes["mask"]


def predict_slices(tr, slices: dict[str, np.ndarray], samples: int, batch_size: int, seed: int,
                   device: torch.device, progress: bool = True, to_hu=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Translate (Z, S, S) normalised slices per source in batches: (mean, std over ``samples``) of ``to_hu(pred)``
    (the identity by default), each (Z, S, S); std is None for one sample."""
    from mm2ct.predict import ArraySlices, predict_batches

    to_hu = to_hu or (lambda x: x)
    data = ArraySlices(slices)
    mean = np.empty((len(data), tr.image_size, tr.image_size), np.float32)
    std = np.empty_like(mean) if samples > 1 else None
    for batch in predict_batches(tr, data, seed, device, batch_size, samples=samples, progress=progress):
        draws = to_hu(batch.draws)  # (K, B, S, S)
        stop = batch.start + len(batch.items)
        mean[batch.start:stop] = draws.mean(0)
        if std is not None:
            std[batch.start:stop] = draws.std(0)
    return mean, std


def translate_volume(checkpoint: str | os.PathLike, t1: str | os.PathLike | None = None,
                     t2: str | os.PathLike | None = None, out: str | os.PathLike | None = None, samples: int = 1,
                     batch_size: int = 8, device: str = "auto", seed: int | None = None,
                     cache: str | os.PathLike | None = None, progress: bool = True, return_spread: bool = False,
                     log=print):
    """Synthetic CT (int16 HU NIfTI on the input grid) of the T1 / T2 volumes with the model in ``checkpoint``.

    ``out``: where to write it (nothing is written when None); with ``samples`` > 1 the spread goes to
    ``spread_path(out)``.  ``seed``: sampling seed (default: the checkpoint config's ``eval.seed``).
    ``cache``: slice-cache folder holding the training normalisation, when the checkpoint does not carry it.
    Returns the sCT image, or (sCT image, spread image or None) with ``return_spread``.
    Raises ``DataError`` (bad input volume: the message names the file) or ``ValueError`` / ``FileNotFoundError``
    (bad checkpoint, missing modality, bad output name); nothing is written then.
    """
    from mm2ct.data.io import DataError, write_like
    from mm2ct.data.preprocess import SliceGeometry
    from mm2ct.checkpoints import load_checkpoint
    from mm2ct.ops import set_default_backend
    from mm2ct.runtime import pick_device

    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    checkpoint = Path(checkpoint)
    t1, t2 = (Path(p) if p is not None else None for p in (t1, t2))
    if out is not None:
        out = Path(out)
        inputs = {f"input {k.upper()}": p for k, p in (("t1", t1), ("t2", t2)) if p is not None}
        inputs["checkpoint"] = checkpoint
        if cache is not None:
            inputs["cache"] = Path(cache)
        _check_outputs([out, spread_path(out)] if samples > 1 else [out], inputs)
    dev = pick_device(device, field="--device")
    tr, cfg, ckpt = load_checkpoint(checkpoint, dev)
    set_default_backend(cfg.scan.backend)
    ref, vols, mask = _read_patient(t1, t2, tr.sources, checkpoint, ckpt["model"], log)
    norms, ct_scale, _ = load_normalisers(ckpt, cfg, checkpoint, cache)
    geom = SliceGeometry(tuple(ref.data.shape), tr.image_size)
    slices = {}
    for s, vol in vols.items():
        norm = norms.get(s) or norms.get("mr")
        if norm is None:
            raise ValueError(f"{checkpoint}: no normaliser for {s} (have {', '.join(sorted(norms))})")
        try:
            scale = norm.scale(vol, mask)
        except ValueError as e:
            raise DataError({"t1": t1, "t2": t2}[s], f"cannot normalise the {s.upper()} volume: {e}") from None
        slices[s] = norm.apply(geom.to_slices(vol, cval=0.0), scale)                  # (Z, S, S) in [-1, 1]
    mean, std = predict_slices(tr, slices, samples, batch_size, cfg.eval.seed if seed is None else seed, dev,
                               progress, to_hu=lambda x: norms["ct"].inverse(x, ct_scale))
    hu = geom.from_slices(mean)                                                       # (X, Y, Z) on the input grid
    sct = np.rint(np.clip(hu, *HU_CLIP)).astype(np.int16)
    spread = np.maximum(geom.from_slices(std), 0.0).astype(np.float32) if std is not None else None

    commit = str(ckpt.get("git_commit", "unknown"))
    ext = ".nii" if out is not None and out.name.endswith(".nii") else ".nii.gz"
    # stage every file in the output folder (same file system), rename only when all of them are complete
    with _staging(out) as tmp:
        staged = {"sct": write_like(Path(tmp) / f"sct{ext}", sct, ref,
                                    descrip=f"mm2ct sCT {ckpt['model']} ep{ckpt.get('epoch')} {commit}")}
        if spread is not None:
            staged["spread"] = write_like(Path(tmp) / f"spread{ext}", spread, ref,
                                          descrip=f"mm2ct sCT spread: std HU of {samples} samples")
        images = {k: _in_memory(p) for k, p in staged.items()}
        if out is not None:
            targets = {"sct": out, "spread": spread_path(out)}
            for k, p in staged.items():
                os.replace(p, targets[k])
    sct_img, spread_img = images["sct"], images.get("spread")
    return (sct_img, spread_img) if return_spread else sct_img


@contextlib.contextmanager
def _staging(out: Path | None) -> Iterator[Path]:
    """A folder to stage the outputs in: ``.NAME.tmp-PID`` beside ``out`` (removed at the end; those of killed
    translations are swept first, ``mm2ct.atomic.sweep_stale``), or a system temporary folder without ``out``."""
    if out is None:
        with tempfile.TemporaryDirectory(prefix="mm2ct-translate-") as tmp:
            yield Path(tmp)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(out.parent)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _in_memory(path: Path):
    """The written file as an in-memory Nifti1Image (the data read, nothing left pointing at the file)."""
    import nibabel as nib

    img = nib.load(str(path))
    return nib.Nifti1Image(np.asanyarray(img.dataobj).copy(), img.affine, img.header.copy())


# ------------------------------------------------------------------------------------------------------- CLI
def configure(parser) -> None:
    from mm2ct.cli import positive_int

    parser.add_argument("--t1", default=None, help="T1-weighted NIfTI (.nii.gz / .nii)")
    parser.add_argument("--t2", default=None, help="T2-weighted NIfTI; defines the output grid when given")
    parser.add_argument("--checkpoint", required=True, help="trained model, e.g. runs/demo/mm2ct/best.pt")
    parser.add_argument("-o", "--output", required=True, help="synthetic CT to write (.nii.gz), int16 HU")
    parser.add_argument("--samples", type=positive_int, default=1,
                        help="diffusion samples per slice: the output is their mean, and their per-voxel std (HU) "
                             "is written to <output>_std.nii.gz (default 1)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="slices per forward pass (default 8)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (default: the checkpoint's eval.seed)")
    parser.add_argument("--cache", default=None,
                        help="slice cache the model was trained on (only when the checkpoint lacks the "
                             "normalisation constants)")
    parser.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    if args.t1 is None and args.t2 is None:
        print("mm2ct translate: error: give --t1 and/or --t2 (the MR volumes to translate)", file=sys.stderr)
        return 2
    img = translate_volume(args.checkpoint, args.t1, args.t2, args.output, samples=args.samples,
                           batch_size=args.batch_size, device=args.device, seed=args.seed, cache=args.cache,
                           progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr))
    hu = np.asanyarray(img.dataobj)
    print(f"wrote {args.output}: {hu.shape} int16 HU in [{int(hu.min())}, {int(hu.max())}]"
          + (f"; spread (std of {args.samples} samples) {spread_path(args.output)}" if args.samples > 1 else ""))
    return 0
