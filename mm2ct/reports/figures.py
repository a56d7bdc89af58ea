"""Fig. 4 of MM2CT and the figures beside the tables, from evaluated runs (HU metrics: docs/data.md §2.3).

    figure4.png / figure4.pdf / figure4.txt  T1 | T2 | each model's sCT | CT, and |sCT - CT| maps in HU
    fused.png / fused.txt                    T1 | T2 | Φ(T1, T2) of each fusion model (what its generators read)
    bar_plot(table)                          our PSNR / SSIM beside the paper's, per table row (not written)

Figures read ``<run>/eval/predictions.npz`` (``mm2ct.evaluate.evaluate`` keeps every test slice's prediction) and
carry the provenance of the runs behind them in the caption file and the PNG/PDF metadata.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mm2ct.atomic import atomic_path, write_text
from mm2ct.metrics import fused_stats
from mm2ct.reports.paper import FUSION_MODELS, TABLE1, TABLE2
from mm2ct.reports.runs import eval_dir, figure_summaries, fmt, make_command, provenance, provenance_lines, require
from mm2ct.reports.tables import METRICS, Table
from mm2ct.workspace import Workspace

# Fig. 4 display windows (stated in the caption): CT W 1400 / L 300, |error| 0..300 HU.
HU_WINDOW = (-400.0, 1000.0)
ERROR_WINDOW = (0.0, 300.0)


@dataclass
class Figure4:
    """A built Fig. 4: the matplotlib figure, its panel grid, the slices and models shown and the caption."""
    figure: Any                                # matplotlib.figure.Figure
    axes: np.ndarray                           # (2 * n_slices, 3 + n_models): image rows, |error| rows
    slices: list[tuple[str, int]]              # (patient, slice) shown, top to bottom
    models: list[str]
    caption: str
    paths: dict[str, Path] = field(default_factory=dict)


def _atomic_savefig(fig, path: Path, fmt: str, metadata: dict[str, str]) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, metadata=metadata, dpi=150)
    return path


def bar_plot(table: Table, keys: tuple[str, ...] = ("psnr", "ssim")):
    """Our values (± as in the table) beside the paper's for each row: one panel per metric. Returns the Figure."""
    from matplotlib.figure import Figure

    df = table.frame
    labels = [f"{m}\n({i})" for m, i in zip(df["method"], df["input"])]
    fig = Figure(figsize=(4.2 * len(keys), 3.6), layout="constrained")
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    x = np.arange(len(df))
    for ax, key in zip(axes, keys):
        label = next(lab for k, _, lab, _ in METRICS if k == key)
        std = df[f"{key}_seed_std"] if int(df["n_seeds"].iloc[0]) > 1 else df[f"{key}_patient_std"]
        ax.bar(x - 0.2, df[key], 0.4, yerr=np.nan_to_num(std.to_numpy(float)), capsize=3, label="ours")
        if key in ("psnr", "ssim"):
            paper = df[f"paper_{key}"].to_numpy(float)
            ax.bar(x + 0.2, np.nan_to_num(paper), 0.4, color="lightgrey", edgecolor="grey", hatch="//",
                   label="paper")
        finite = np.concatenate([df[key].to_numpy(float), df.get(f"paper_{key}", df[key]).to_numpy(float)])
        finite = finite[np.isfinite(finite)]
        if finite.size:
            lo, hi = finite.min(), finite.max()
            ax.set_ylim(max(0.0, lo - 0.15 * (hi - lo + 1)), hi + 0.3 * (hi - lo + 1))
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_ylabel(label)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{table.name} (profile {table.provenance['profile']})", fontsize=9)
    return fig



# ------------------------------------------------------------------------------------------------ Fig. 4
def load_predictions(ws: Workspace, models: list[str], seed: int | None = None) -> dict[str, dict[str, np.ndarray]]:
    """``{model: arrays of <run>/eval/predictions.npz}``; MissingRunError lists runs without predictions."""
    seed = int(ws.cfg.train.seeds[0] if seed is None else seed)
    require(ws, [(m, seed) for m in models], "predictions.npz")
    out = {}
    for m in models:
        path = eval_dir(ws, m, seed) / "predictions.npz"
        try:
            with np.load(path, allow_pickle=False) as z:
                out[m] = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: unreadable predictions ({e})") from None
        need = {"pred", "ct", "mask", "t1", "t2", "pred_hu", "ct_hu", "patient", "slice"} - set(out[m])
        if need:
            raise ValueError(f"{path}: lacks {sorted(need)}; re-run `{make_command(ws, m, seed, True)}`")
    return out


def choose_slices(preds: dict[str, dict[str, np.ndarray]], n: int) -> list[tuple[str, int]]:
    """``n`` test slices present for every model, chosen deterministically: among the slices whose body area is
    at least the median (the "most body" half), ``n`` evenly spaced ones in (patient, slice) order."""
    keysets = [{(str(p), int(s)) for p, s in zip(d["patient"], d["slice"])} for d in preds.values()]
    common = sorted(set.intersection(*keysets))
    if not common:
        raise ValueError("the models' predictions share no (patient, slice): were they evaluated on the same data?")
    first = next(iter(preds.values()))
    index = {(str(p), int(s)): i for i, (p, s) in enumerate(zip(first["patient"], first["slice"]))}
    area = np.array([float((first["mask"][index[k]] > 0).sum()) for k in common])
    big = [k for k, a in zip(common, area) if a >= np.median(area)]
    n = max(1, min(n, len(big)))
    picks = np.unique(np.round(np.linspace(0, len(big) - 1, n)).astype(int))
    return [big[i] for i in picks]


def figure4(ws: Workspace, models: list[str] | None = None, seed: int | None = None, n_slices: int | None = None,
            write: bool = True) -> Figure4:
    """Fig. 4: per test slice, T1 | T2 | each model's synthetic CT | ground-truth CT (window ``HU_WINDOW``) and
    below each synthetic CT its |sCT - CT| map (``ERROR_WINDOW``), MAE in the body mask in the panel title."""
    from matplotlib.figure import Figure

    models = list(models or [s.model for s in TABLE1])
    seed = int(ws.cfg.train.seeds[0] if seed is None else seed)
    preds = load_predictions(ws, models, seed)
    picked = choose_slices(preds, ws.cfg.eval.figure_slices if n_slices is None else n_slices)
    labels = {s.model: f"{s.method} ({s.input})" for s in (*TABLE2, *TABLE1)}   # Table 1 names win
    index = {m: {(str(p), int(s)): i for i, (p, s) in enumerate(zip(d["patient"], d["slice"]))}
             for m, d in preds.items()}
    first = models[0]
    ncols, nrows = 3 + len(models), 2 * len(picked)
    fig = Figure(figsize=(1.7 * ncols + 1.0, 1.75 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    im_hu = im_err = None
    for r, key in enumerate(picked):
        i0 = index[first][key]
        d0 = preds[first]
        ct_hu = d0["ct_hu"][i0]
        mask = d0["mask"][i0] > 0
        top, bottom = axes[2 * r], axes[2 * r + 1]
        for c, mod in enumerate(("t1", "t2")):
            img = d0[mod][i0]
            lo, hi = np.percentile(img, [0.5, 99.5])
            top[c].imshow(img, cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-6))
            top[c].set_title(mod.upper(), fontsize=7)
        for c, m in enumerate(models, start=2):
            i = index[m][key]
            hu = preds[m]["pred_hu"][i]
            err = np.abs(hu - ct_hu)
            mae = float(err[mask].mean()) if mask.any() else math.nan
            im_hu = top[c].imshow(hu, cmap="gray", vmin=HU_WINDOW[0], vmax=HU_WINDOW[1])
            top[c].set_title(labels.get(m, m), fontsize=7)
            im_err = bottom[c].imshow(err, cmap="magma", vmin=ERROR_WINDOW[0], vmax=ERROR_WINDOW[1])
            bottom[c].set_title(f"|error|, MAE {fmt(mae, 0)} HU", fontsize=6)
        top[-1].imshow(ct_hu, cmap="gray", vmin=HU_WINDOW[0], vmax=HU_WINDOW[1])
        top[-1].set_title("CT (ground truth)", fontsize=7)
        top[0].text(-0.08, 0.5, f"{key[0]} / slice {key[1]}", transform=top[0].transAxes, rotation=90,
                    ha="right", va="center", fontsize=7)
        bottom[0].text(0.5, 0.5, "|sCT − CT|\n(HU)", transform=bottom[0].transAxes, ha="center", va="center",
                       fontsize=7)
        for ax in (*top, *bottom):
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in (bottom[0], bottom[1], bottom[-1]):
            ax.set_axis_off()
        fig.colorbar(im_hu, ax=top.tolist(), shrink=0.9, label="HU")
        fig.colorbar(im_err, ax=bottom.tolist(), shrink=0.9, label="|error| (HU)")

    summaries = figure_summaries(ws, models, seed)
    prov = provenance(ws, summaries, "Fig. 4")
    caption = (f"Fig. 4 (profile {ws.profile}, seed {seed}). Test slices (patient / slice): "
               + ", ".join(f"{p} / {s}" for p, s in picked)
               + ", chosen evenly through the test slices with at least the median body area. Columns: T1 | T2 | "
               + " | ".join(labels.get(m, m) for m in models) + " | CT (ground truth). CT and synthetic CT window "
               f"[{HU_WINDOW[0]:.0f}, {HU_WINDOW[1]:.0f}] HU (W {HU_WINDOW[1] - HU_WINDOW[0]:.0f} / L "
               f"{(HU_WINDOW[0] + HU_WINDOW[1]) / 2:.0f}); rows below: |sCT − CT| in [{ERROR_WINDOW[0]:.0f}, "
               f"{ERROR_WINDOW[1]:.0f}] HU with the MAE inside the body mask. MR shown in the network's normalised "
               "range, 0.5-99.5 percentile window per panel. Radiological view (slices as the slice cache stores "
               "them: anterior at the top, patient's right on the left).")
    result = Figure4(fig, axes, picked, models, caption)
    if write:
        out = Path(ws.reports_dir)
        out.mkdir(parents=True, exist_ok=True)
        text = caption + "\n\n" + "\n".join(provenance_lines(prov)) + "\n"
        meta_common = f"profile {ws.profile}; seeds {seed}; commits train {', '.join(prov['train_commits'])} " \
                      f"eval {', '.join(prov['eval_commits'])} report {prov['report_commit']}; wall " \
                      f"{prov['wall_seconds']:.1f} s"
        result.paths = {
            "png": _atomic_savefig(fig, out / "figure4.png", "png",
                                   {"Title": "MM2CT Fig. 4", "Description": text, "Software": "mm2ct.reports"}),
            "pdf": _atomic_savefig(fig, out / "figure4.pdf", "pdf",
                                   {"Title": "MM2CT Fig. 4", "Subject": caption, "Keywords": meta_common,
                                    "Creator": "mm2ct.reports.figure4"}),
            "txt": write_text(out / "figure4.txt", text),
        }
    return result


# ------------------------------------------------------------------------------------------------ fused images
def fused_figure(ws: Workspace, models: list[str] | None = None, seed: int | None = None,
                 n_slices: int | None = None, write: bool = True) -> Figure4:
    """What each fusion model feeds its generators: per test slice T1 | T2 | Φ(T1, T2) of each model, all in the
    network's [-1, 1] range with one grey window, so a low-contrast Φ shows as such. Panel titles give Φ's spread
    and its Pearson r with T1 and T2 over all test slices (``mm2ct.metrics.fused_stats``). Written as
    ``fused.png`` / ``fused.txt`` (caption + provenance); the slices are Fig. 4's."""
    from matplotlib.figure import Figure

    models = list(models or [m for m in FUSION_MODELS if m in ws.cfg.train.models])
    seed = int(ws.cfg.train.seeds[0] if seed is None else seed)
    preds = load_predictions(ws, models, seed)
    stale = [m for m in models if "fused" not in preds[m]]
    if stale:
        raise ValueError("no fused image in the predictions of " + ", ".join(stale) + " (not a fusion model, or "
                         "evaluated before mm2ct saved it); re-run "
                         + "; ".join(f"`{make_command(ws, m, seed, True)}`" for m in stale))
    picked = choose_slices(preds, ws.cfg.eval.figure_slices if n_slices is None else n_slices)
    labels = {s.model: s.method for s in TABLE2}
    stats = {m: fused_stats(preds[m]) for m in models}
    src_std = {k: float(preds[models[0]][k].astype(np.float64).std()) for k in ("t1", "t2")}
    index = {m: {(str(p), int(s)): i for i, (p, s) in enumerate(zip(d["patient"], d["slice"]))}
             for m, d in preds.items()}
    ncols = 2 + len(models)
    fig = Figure(figsize=(1.8 * ncols + 0.8, 1.9 * len(picked)), layout="constrained")
    axes = fig.subplots(len(picked), ncols, squeeze=False)
    im = None
    for r, key in enumerate(picked):
        d0, i0 = preds[models[0]], index[models[0]][key]
        panels = [(f"T1\nstd {src_std['t1']:.3f}", d0["t1"][i0]), (f"T2\nstd {src_std['t2']:.3f}", d0["t2"][i0])]
        for m in models:
            s = stats[m]
            panels.append((f"Φ: {labels.get(m, m)}\nstd {s['fused_std']:.3f}, r(T1) {s['fused_corr_t1']:.2f}, "
                           f"r(T2) {s['fused_corr_t2']:.2f}", preds[m]["fused"][index[m][key]]))
        for ax, (title, img) in zip(axes[r], panels):
            im = ax.imshow(img, cmap="gray", vmin=-1.0, vmax=1.0)
            ax.set_title(title, fontsize=6)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(f"{key[0]} / slice {key[1]}", fontsize=7)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="network range [-1, 1]")
    summaries = figure_summaries(ws, models, seed)
    prov = provenance(ws, summaries, "fused images")
    caption = (f"Fused images Φ(T1, T2) (profile {ws.profile}, seed {seed}), the condition each fusion model's "
               "generators read, on Fig. 4's test slices (patient / slice): "
               + ", ".join(f"{p} / {s}" for p, s in picked) + ". Columns: T1 | T2 | "
               + " | ".join(labels.get(m, m) for m in models) + ". One grey window [-1, 1] for every panel. "
               f"std: spread over all test pixels (T1 {src_std['t1']:.3f}, T2 {src_std['t2']:.3f}); r: Pearson "
               "correlation with T1 and T2. "
               + "; ".join(f"{m}: std {s['fused_std']:.4f}, r(T1) {s['fused_corr_t1']:.3f}, "
                           f"r(T2) {s['fused_corr_t2']:.3f}" for m, s in stats.items()) + ".")
    result = Figure4(fig, axes, picked, models, caption)
    if write:
        out = Path(ws.reports_dir)
        out.mkdir(parents=True, exist_ok=True)
        text = caption + "\n\n" + "\n".join(provenance_lines(prov)) + "\n"
        result.paths = {
            "png": _atomic_savefig(fig, out / "fused.png", "png",
                                   {"Title": "MM2CT fused images", "Description": text, "Software": "mm2ct.reports"}),
            "txt": write_text(out / "fused.txt", text),
        }
    return result
