"""Evaluate a trained translator on the test patients (docs/method.md §8.5, docs/data.md §2.3).

For every test slice: the synthetic CT from ``translator.translate`` (EMA weights of ``best.pt``, fixed sampling
seed ``eval.seed``), then
- paper-style PSNR / SSIM (%) on the [-1, 1] slice (``mm2ct.metrics.paper_metrics``), and
- SynthRAD2023-style MAE / PSNR / SSIM in HU inside the body mask, per patient on the restacked slices
  (``mm2ct.metrics.synthrad_metrics``; slices are those of the profile's grid, not the scanner's), and
- per patient, bone Dice (CT > 200 HU inside the body mask, ``mm2ct.metrics.bone_dice``) and input usage (how far
  the prediction's departure from the mean training CT follows the patient's, ``mm2ct.metrics.input_usage``).

``evaluate(ws, "template")`` scores the template (``mm2ct.template``: the mean training CT whatever the MR) the
same way: the floor a model that has learned to use its input must beat.

Writes ``<run>/eval/slices.csv``, ``patients.csv`` and ``summary.json`` (every number with the checkpoint, seed,
profile and git commit that produced it) and returns the summary.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mm2ct.atomic import atomic_path, write_text
from mm2ct.checkpoints import load_checkpoint, run_dir
from mm2ct.metrics import BONE_HU, aggregate, bone_dice, fused_stats, input_usage, paper_metrics, synthrad_metrics
from mm2ct.provenance import git_commit, machine, portable_path
from mm2ct.runtime import pick_device, pinned_threads
from mm2ct.template import TEMPLATE, TemplateTranslator, mean_training_ct, template_dir
from mm2ct.workspace import Workspace

EVAL_FORMAT = 4  # written into summary.json; raised whenever evaluate writes new outputs, so that notebooks
                 # re-evaluate older runs (2: MM2CT predictions carry the fused image, summaries its statistics;
                 # 3: paths relative to the work directory, eval_samples; 4: bone Dice and input usage, the template)
PAPER_KEYS = ("psnr", "ssim")
HU_KEYS = ("mae_hu", "psnr_hu", "ssim_hu")
PATIENT_KEYS = (*HU_KEYS, "dice_bone", "input_usage")   # per patient, then mean ± std across patients


def _write_csv(path: Path, rows: list[dict]) -> None:
    import pandas as pd

    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


def predict(tr, dataset, seed: int, device: torch.device, batch_size: int = 8, max_slices: int | None = None,
            progress: bool = True, samples: int = 1) -> dict[str, np.ndarray]:
    """Synthetic CT for the first ``max_slices`` slices of ``dataset`` (all by default), with one random stream
    seeded with ``seed``; with ``samples`` > 1 the prediction is the mean of that many draws per slice and ``spread``
    their standard deviation. Returns arrays stacked over slices: pred, ct, mask, t1, t2 ((S, H, W), [-1, 1]) and
    patient / slice identifiers (``evaluate`` adds pred_hu and ct_hu in HU); MM2CT models add ``fused``, the
    fusion module's output Φ(T1, T2) ((S, H, W), [-1, 1]) that conditions their generators."""
    from mm2ct.predict import predict_batches

    keys = ("t1", "t2", "ct", "mask")
    out: dict[str, list] = {k: [] for k in (*keys, "pred", "patient", "slice")}
    fusion = tr.family == "mm2ct"
    for batch in predict_batches(tr, dataset, seed, device, batch_size, max_slices, samples, condition=fusion,
                                 progress=progress, desc=f"{tr.name}: test slices"):
        out["pred"].append(batch.draws.mean(0))
        if samples > 1:
            out.setdefault("spread", []).append(batch.draws.std(0))
        if fusion:
            out.setdefault("fused", []).append(batch.condition[:, 0])
        for k in keys:
            out[k].append(np.stack([np.asarray(it[k])[0] for it in batch.items]))
        out["patient"] += [it["patient"] for it in batch.items]
        out["slice"] += [int(it["slice"]) for it in batch.items]
    return {k: (np.concatenate(v) if k not in ("patient", "slice") else np.asarray(v)) for k, v in out.items()}


def to_hu(x: np.ndarray, patient: str, meta: dict[str, Any]) -> np.ndarray:
    """[-1, 1] CT slices of a cached patient -> HU with the cache's CT normaliser and that patient's scale
    (``data.ct_norm = window``: the fixed HU window; ``syndiff``: the patient's volume scale)."""
    from mm2ct.data.preprocess import IntensityNormaliser

    d = dict(meta["normalisers"]["ct"])
    d.pop("inference_scale", None)
    scale = float(meta["patients"][patient].get("scales", {}).get("ct", 1.0))
    return IntensityNormaliser(**d).inverse(x, scale)


def score(pred: dict[str, np.ndarray], meta: dict[str, Any],
          template: np.ndarray | None = None) -> tuple[list[dict], list[dict]]:
    """Per-slice paper-style rows and per-patient rows: paper-style means, SynthRAD HU metrics, bone Dice
    (CT > ``BONE_HU`` inside the body mask, over the patient's slices) and input usage (``input_usage`` against
    ``template``, the mean training CT (S, S) in [-1, 1] mapped to HU like the predictions; nan without it).
    ``meta``: the slice cache's meta (CT normaliser and per-patient scales); docs/data.md §9."""
    slice_rows = []
    for i, (p, s) in enumerate(zip(pred["patient"], pred["slice"])):
        m = paper_metrics(pred["pred"][i], pred["ct"][i])
        slice_rows.append({"patient": str(p), "slice": int(s), **m})
    patient_rows = []
    for p in dict.fromkeys(pred["patient"]):
        idx = np.flatnonzero(pred["patient"] == p)
        idx = idx[np.argsort(pred["slice"][idx])]
        hu_pred = to_hu(pred["pred"][idx], str(p), meta)  # (S, H, W)
        hu_gt = to_hu(pred["ct"][idx], str(p), meta)
        mask = pred["mask"][idx] > 0
        hu = synthrad_metrics(hu_pred, hu_gt, mask) if len(idx) >= 7 else \
            _slicewise_synthrad(hu_pred, hu_gt, mask)
        usage = float("nan") if template is None else \
            input_usage(hu_pred, hu_gt, to_hu(np.broadcast_to(template, hu_pred.shape), str(p), meta), mask)
        rows = [r for r in slice_rows if r["patient"] == str(p)]
        patient_rows.append({"patient": str(p), "n_slices": len(idx),
                             **{k: float(np.nanmean([r[k] for r in rows])) for k in PAPER_KEYS},
                             "mae_hu": hu["mae"], "psnr_hu": hu["psnr"], "ssim_hu": hu["ssim"],
                             "dice_bone": bone_dice(hu_pred, hu_gt, mask, BONE_HU), "input_usage": usage})
    return slice_rows, patient_rows


def _slicewise_synthrad(hu_pred, hu_gt, mask) -> dict[str, float]:
    """Fewer than 7 slices (tiny profiles): SynthRAD metrics per 2-D slice, averaged."""
    rows = [synthrad_metrics(a, b, m) for a, b, m in zip(hu_pred, hu_gt, mask) if m.any()]
    return {k: float(np.nanmean([r[k] for r in rows])) if rows else float("nan") for k in ("mae", "psnr", "ssim")}


def _mean_std(values) -> tuple[float, float]:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    return (float(v.mean()), float(v.std())) if v.size else (float("nan"), float("nan"))


def evaluate(ws: Workspace, model: str, seed: int | None = None, split: str = "test", progress: bool = True,
             keep_predictions: bool = True) -> dict[str, Any]:
    """Evaluate ``runs/<profile>/<model>[-seed<S>]/best.pt`` on ``split``; write and return the summary.
    ``model = "template"`` (``mm2ct.template``: the mean training CT, no MR, no checkpoint, no seed) is evaluated
    into ``runs/<profile>/template/eval/`` whatever ``seed``."""
    from mm2ct.ops import set_default_backend

    t0 = time.time()
    if model == TEMPLATE:
        return _evaluate_template(ws, split, progress, keep_predictions)
    run = run_dir(ws, model, seed)
    ckpt_path = run / "best.pt"
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"{ckpt_path}: no trained checkpoint; train first (`mm2ct train --profile "
                                f"{ws.profile} --model {model}`)")
    from mm2ct.checkpoints import check_trained_with

    device = pick_device(ws.cfg.train.device, "train.device")
    set_default_backend(ws.cfg.scan.backend)
    tr, cfg, ckpt = load_checkpoint(ckpt_path, device)
    check_trained_with(ckpt, ws.cfg, ckpt_path, ws.profile)   # before the cache is (re)built for another config
    trained = {"seed": ckpt["seed"], "checkpoint": portable_path(ckpt_path, ws.root),
               "checkpoint_epoch": ckpt["epoch"], "best_val_psnr": ckpt["best_psnr"],
               "train_seconds": round(ckpt["seconds"], 1), "train_commit": ckpt["git_commit"],
               "train_machine": ckpt.get("machine")}
    return _evaluate_translator(ws, tr, model, run / "eval", split, trained, device, max(1, cfg.train.batch_size),
                                ws.cfg.eval.n_samples, t0, progress, keep_predictions)


def _evaluate_template(ws: Workspace, split: str, progress: bool, keep_predictions: bool) -> dict[str, Any]:
    """The template (``mm2ct.template``) through the same prediction, scoring and writing as a trained model."""
    from mm2ct.data.slices import ensure_cache

    t0 = time.time()
    tr = TemplateTranslator(mean_training_ct(ensure_cache(ws)))
    made = {"seed": None, "checkpoint": None, "checkpoint_epoch": None, "best_val_psnr": None,
            "train_seconds": round(time.time() - t0, 1), "train_commit": git_commit()}
    return _evaluate_translator(ws, tr, TEMPLATE, template_dir(ws) / "eval", split, made, torch.device("cpu"),
                                max(1, ws.cfg.train.batch_size), 1, t0, progress, keep_predictions)


def _evaluate_translator(ws: Workspace, tr, model: str, out: Path, split: str, trained: dict[str, Any],
                         device: torch.device, batch_size: int, samples: int, t0: float, progress: bool,
                         keep_predictions: bool) -> dict[str, Any]:
    """Predict ``split`` with ``tr``, score it (``score``, with the template for input usage) and write
    ``out``/slices.csv, patients.csv, predictions.npz and summary.json; ``trained``: where the weights come from
    (seed, checkpoint, its epoch, validation PSNR, training time and commit)."""
    from mm2ct.data.slices import SliceDataset, ensure_cache

    dataset = SliceDataset(ensure_cache(ws), split, paired=True)
    with pinned_threads(ws.cfg.train.threads if device.type == "cpu" else 0) as threads:  # same bits every time
        pred = predict(tr, dataset, ws.cfg.eval.seed, device, batch_size=batch_size,
                       max_slices=ws.cfg.eval.max_test_slices, progress=progress, samples=samples)
    pred["pred_hu"] = np.stack([to_hu(x, str(p), dataset.meta) for x, p in zip(pred["pred"], pred["patient"])])
    pred["ct_hu"] = np.stack([to_hu(x, str(p), dataset.meta) for x, p in zip(pred["ct"], pred["patient"])])
    slice_rows, patient_rows = score(pred, dataset.meta, mean_training_ct(dataset.cache_dir))
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "slices.csv", slice_rows)
    _write_csv(out / "patients.csv", patient_rows)
    if keep_predictions:
        with atomic_path(out / "predictions.npz") as tmp:
            np.savez_compressed(tmp, **pred)

    agg = aggregate(slice_rows, keys=list(PAPER_KEYS))
    summary: dict[str, Any] = {
        "eval_format": EVAL_FORMAT, "model": model, "profile": ws.profile, "split": split, "seed": trained["seed"],
        "eval_seed": ws.cfg.eval.seed, "eval_samples": samples,
        **{k: v for k, v in trained.items() if k != "seed"},
        "data": portable_path(ws.data_root, ws.root), "n_slices": len(slice_rows), "n_patients": len(patient_rows),
        "bone_threshold_hu": BONE_HU,
    }
    for k in PAPER_KEYS:
        summary[k] = agg[k]["slice_mean"]
        summary[f"{k}_patient_mean"], summary[f"{k}_patient_std"] = agg[k]["patient_mean"], agg[k]["patient_std"]
    for k in PATIENT_KEYS:
        summary[k], summary[f"{k}_std"] = _mean_std(r[k] for r in patient_rows)
    if "fused" in pred:
        summary.update(fused_stats(pred))
    summary["eval_commit"] = git_commit()
    summary["eval_machine"] = machine(threads)
    summary["eval_seconds"] = round(time.time() - t0, 1)
    write_text(out / "summary.json", json.dumps(summary, indent=2))
    return summary


def configure(parser) -> None:
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--model", nargs="+", default=None, help="default: the profile's train.models")
    parser.add_argument("--seed", type=int, nargs="+", default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--split", default="test", choices=("val", "test"))


def run(args) -> int:
    from mm2ct.config import ConfigError
    from mm2ct.translators import MODELS
    from mm2ct.workspace import resolve

    ws = resolve(args.profile, args.data_dir)
    models = list(args.model or ws.cfg.train.models)
    unknown = [m for m in models if m not in MODELS and m != TEMPLATE]
    if unknown:
        raise ConfigError(f"{'--model' if args.model else 'train.models'}: unknown model {', '.join(unknown)}; "
                          f"known: {', '.join((*MODELS, TEMPLATE))}")
    for m in models:
        for s in args.seed or ws.cfg.train.seeds:
            r = evaluate(ws, m, s, args.split)
            print(f"{m} seed {s}: PSNR {r['psnr']:.2f} dB  SSIM {r['ssim']:.2f} %  MAE {r['mae_hu']:.1f} HU  "
                  f"({r['n_slices']} slices, {r['n_patients']} patients)")
    return 0
