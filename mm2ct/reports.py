"""Table 1, Table 2 and Fig. 4 of MM2CT from evaluated runs, beside the paper's numbers (never trains).

Inputs are what ``mm2ct.evaluate.evaluate`` writes for each run ``runs/<profile>/<model>[-seed<S>]/eval/``:
``summary.json`` (tables) and ``predictions.npz`` (figure).  Outputs go to ``ws.reports_dir``, each written to a
temporary file and renamed:

    table1.csv / table1.md / table1.json     CycleGAN, SynDiff (T1, T2) vs MM2CT (T1+T2)   (docs/method.md §1.4)
    table2.csv / table2.md / table2.json     ablation: no Mamba / Mamba / Mamba + DE       (docs/method.md §1.5)
    figure4.png / figure4.pdf / figure4.txt  T1 | T2 | each model's sCT | CT, and |sCT - CT| maps in HU
    fused.png / fused.txt                    T1 | T2 | Φ(T1, T2) of each fusion model (what its generators read)

Columns: paper-style PSNR (dB) and SSIM (%) on max-normalised [0, 1] slices, mean over all test slices
(method.md §8.5, Open choice 20), and SynthRAD2023-style MAE / PSNR / SSIM in HU inside the body mask (data.md
§2.3), mean over test patients.  With one seed the "±" is the std across test patients; with several seeds
(``train.seeds``) the value is the mean over seeds and "±" the std across seeds (ddof 1).  The ordering the
paper claims (MM2CT above the best single-modality model; each Table 2 row above the previous one) is checked for
every seed.

Provenance: every artefact carries the profile, data folder, seeds, git commits (train, eval, report) and wall
time (train + eval seconds) of the runs behind its numbers: ``#`` lines at the top of the CSV
(``pandas.read_csv(path, comment="#")`` skips them), a block in the Markdown, the JSON sidecar, the caption text
and the PDF/PNG metadata of the figure.

    t1 = table1(ws); print(t1.markdown)          # raises MissingRunError naming the runs to train/evaluate
    fig = figure4(ws).figure
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from mm2ct.atomic import atomic_path, write_text
from mm2ct.checkpoints import run_dir
from mm2ct.metrics import fused_stats
from mm2ct.provenance import git_commit
from mm2ct.workspace import Workspace

# Summary keys shown in the tables: (summary key, key of its across-patient std, column label, decimals)
METRICS: tuple[tuple[str, str, str, int], ...] = (
    ("psnr", "psnr_patient_std", "PSNR (dB)", 2),
    ("ssim", "ssim_patient_std", "SSIM (%)", 2),
    ("mae_hu", "mae_hu_std", "MAE (HU)", 1),
    ("psnr_hu", "psnr_hu_std", "PSNR HU (dB)", 2),
    ("ssim_hu", "ssim_hu_std", "SSIM HU", 4),
)

# Fig. 4 display windows (stated in the caption): CT W 1400 / L 300, |error| 0..300 HU.
HU_WINDOW = (-400.0, 1000.0)
ERROR_WINDOW = (0.0, 300.0)


@dataclass(frozen=True)
class RowSpec:
    """One table row: the run it comes from and the paper's numbers beside it (None: not recovered)."""
    model: str
    method: str
    input: str
    paper_psnr: float | None = None
    paper_ssim: float | None = None
    paper_status: str = "not recovered"
    paper_tag: str = ""                       # short qualifier shown beside the paper's value in Markdown
    extra: tuple[tuple[str, str], ...] = ()   # extra leading columns (Table 2: Mamba module, DE)
    choose_from: tuple[str, ...] = ()         # a row that is one of these runs, picked per seed by validation PSNR
    ours: bool = False                        # a row of ours, not the paper's: left out of the ordering check


_SYNDIFF_PAPER = dict(paper_psnr=25.36, paper_ssim=88.97, paper_tag="derived",
                      paper_status="derived: the paper's best SynDiff row (input T1 or T2 not known) = "
                                   "MM2CT - 0.36 dB / - 0.57 %, method.md §1.4")
TABLE1: tuple[RowSpec, ...] = (
    RowSpec("cyclegan_t1", "CycleGAN", "T1"),
    RowSpec("cyclegan_t2", "CycleGAN", "T2"),
    RowSpec("syndiff_t1", "SynDiff", "T1", **_SYNDIFF_PAPER),
    RowSpec("syndiff_t2", "SynDiff", "T2", **_SYNDIFF_PAPER),
    RowSpec("mm2ct", "MM2CT", "T1+T2", 25.72, 89.54,
            "assumed equal to Table 2 row 3 (Table 1 itself not recovered), method.md §1.4",
            "= Table 2"),
)
TABLE2: tuple[RowSpec, ...] = (
    RowSpec("syndiff_best", "no Mamba module, no DE: SynDiff (Table 1)", "T1 or T2", 25.36, 88.97,
            "verbatim, Table 2 row 1 (equal to the paper's SynDiff row)", extra=(("Mamba module", "–"), ("DE", "–")),
            choose_from=("syndiff_t1", "syndiff_t2")),
    RowSpec("mm2ct_node", "Mamba module", "T1+T2", 25.49, 89.45, "verbatim, Table 2 row 2",
            extra=(("Mamba module", "✓"), ("DE", "–"))),
    RowSpec("mm2ct", "Mamba module + DE", "T1+T2", 25.72, 89.54, "verbatim, Table 2 row 3",
            extra=(("Mamba module", "✓"), ("DE", "✓"))),
    RowSpec("mm2ct_nomamba", "conv-only fusion (ours)", "T1+T2", paper_status="not in the paper",
            extra=(("Mamba module", "–"), ("DE", "–")), ours=True),
)
_INPUT = {spec.model: spec.input for spec in TABLE1}
FUSION_MODELS = ("mm2ct_nomamba", "mm2ct_node", "mm2ct")  # the runs with a fused image Φ
SINGLE_MODALITY = ("cyclegan_t1", "cyclegan_t2", "syndiff_t1", "syndiff_t2")


class MissingRunError(FileNotFoundError):
    """Runs a report needs have no evaluation; the message names each run folder and the command that makes it."""


@dataclass(repr=False)
class Table:
    """A built table: numbers per row (``frame``), the Markdown text, the ordering check and where it was written."""
    name: str
    frame: Any                                 # pandas.DataFrame, one row per RowSpec
    markdown: str
    ordering: dict[str, Any]
    provenance: dict[str, Any]
    per_seed: dict[str, dict[int, dict[str, float]]]
    paths: dict[str, Path] = field(default_factory=dict)

    def _repr_markdown_(self) -> str:          # Jupyter shows the Markdown table
        return self.markdown

    def __repr__(self) -> str:
        return self.markdown.split("\n\n")[1] if "\n\n" in self.markdown else self.markdown


@dataclass
class Figure4:
    """A built Fig. 4: the matplotlib figure, its panel grid, the slices and models shown and the caption."""
    figure: Any                                # matplotlib.figure.Figure
    axes: np.ndarray                           # (2 * n_slices, 3 + n_models): image rows, |error| rows
    slices: list[tuple[str, int]]              # (patient, slice) shown, top to bottom
    models: list[str]
    caption: str
    paths: dict[str, Path] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ helpers
def _atomic_savefig(fig, path: Path, fmt: str, metadata: dict[str, str]) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, metadata=metadata, dpi=150)
    return path


def _make_command(ws: Workspace, model: str, seed: int, trained: bool) -> str:
    data = f" --data-dir {ws.cfg.data.root}" if ws.cfg.data.root else ""
    args = f"--profile {ws.profile} --model {model} --seed {seed}{data}"
    ev = f"mm2ct evaluate {args}"
    return ev if trained else f"mm2ct train {args} && {ev}"


def _eval_dir(ws: Workspace, model: str, seed: int) -> Path:
    return run_dir(ws, model, seed) / "eval"


def _missing(ws: Workspace, wanted: list[tuple[str, int]], filename: str) -> None:
    """Raise MissingRunError listing every (model, seed) whose eval folder lacks ``filename``."""
    lines = []
    for model, seed in wanted:
        ev = _eval_dir(ws, model, seed)
        if not (ev / filename).is_file():
            trained = (ev.parent / "best.pt").is_file()
            why = "trained but not evaluated" if trained else "not trained"
            lines.append(f"  {ev.parent} ({model}, seed {seed}; {why}): no {ev / filename}\n"
                         f"      make it with: {_make_command(ws, model, seed, trained)}")
    if lines:
        raise MissingRunError(f"{len(lines)} run(s) needed for this report are missing under {ws.runs_dir}:\n"
                              + "\n".join(lines))


def missing_runs(ws: Workspace, models: list[str], seeds: list[int] | None = None,
                 filename: str = "summary.json") -> list[tuple[str, int]]:
    """(model, seed) pairs whose evaluation output ``filename`` is absent or older than the run's ``best.pt``, or
    whose summary.json comes from an older ``mm2ct.evaluate.EVAL_FORMAT``: what a notebook must train and/or
    evaluate before building a report (this module never does)."""
    from mm2ct.evaluate import EVAL_FORMAT

    seeds = [int(s) for s in (ws.cfg.train.seeds if seeds is None else seeds)]
    out = []
    for m in models:
        for s in seeds:
            ev = _eval_dir(ws, m, s)
            best = ev.parent / "best.pt"
            f = ev / filename
            if not f.is_file() or (best.is_file() and best.stat().st_mtime > f.stat().st_mtime) \
                    or _eval_format(ev / "summary.json") < EVAL_FORMAT:
                out.append((m, s))
    return out


def _eval_format(path: Path) -> int:
    """The ``eval_format`` of a summary.json (1 before it was recorded; 0 when absent or unreadable)."""
    try:
        return int(json.loads(path.read_text()).get("eval_format", 1))
    except (OSError, ValueError, AttributeError):
        return 0


def load_summaries(ws: Workspace, models: list[str], seeds: list[int] | tuple[int, ...]) -> dict:
    """``{(model, seed): summary dict}`` from ``<run>/eval/summary.json``; MissingRunError lists what is absent."""
    wanted = [(m, int(s)) for m in models for s in seeds]
    _missing(ws, wanted, "summary.json")
    out = {}
    for m, s in wanted:
        path = _eval_dir(ws, m, s) / "summary.json"
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: unreadable evaluation summary ({e}); re-run "
                             f"`{_make_command(ws, m, s, True)}`") from None
        if summary.get("profile") not in (None, ws.profile):
            raise ValueError(f"{path}: evaluated under profile {summary.get('profile')!r}, not {ws.profile!r}")
        summary["_path"] = str(path)
        out[(m, s)] = summary
    return out


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def _mean_std(values: list[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else math.nan)


def _fmt(v: float, decimals: int) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.{decimals}f}"


def provenance(ws: Workspace, summaries: dict, what: str) -> dict[str, Any]:
    """Who made the numbers: profile, data, seeds, commits and wall time of every run, plus the report's commit."""
    runs = []
    for (m, s), sm in summaries.items():
        runs.append({"model": m, "seed": s, "summary": sm["_path"], "checkpoint": sm.get("checkpoint"),
                     "checkpoint_epoch": sm.get("checkpoint_epoch"), "train_commit": sm.get("train_commit"),
                     "eval_commit": sm.get("eval_commit"), "train_seconds": _num(sm.get("train_seconds")),
                     "eval_seconds": _num(sm.get("eval_seconds")), "n_slices": sm.get("n_slices"),
                     "n_patients": sm.get("n_patients"), "data": sm.get("data")})
    train_s = sum(r["train_seconds"] for r in runs if np.isfinite(r["train_seconds"]))
    eval_s = sum(r["eval_seconds"] for r in runs if np.isfinite(r["eval_seconds"]))
    return {
        "artefact": what, "profile": ws.profile,
        "data": sorted({str(r["data"]) for r in runs}) or [str(ws.data_root)],
        "seeds": sorted({r["seed"] for r in runs}),
        "train_commits": sorted({str(r["train_commit"]) for r in runs}),
        "eval_commits": sorted({str(r["eval_commit"]) for r in runs}),
        "report_commit": git_commit(),
        "train_seconds": round(train_s, 1), "eval_seconds": round(eval_s, 1),
        "wall_seconds": round(train_s + eval_s, 1),
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "runs": runs,
    }


def _provenance_lines(p: dict[str, Any]) -> list[str]:
    lines = [f"{p['artefact']} — profile {p['profile']}",
             f"data: {', '.join(p['data'])}",
             f"seeds: {', '.join(map(str, p['seeds']))}",
             f"git commits: train {', '.join(p['train_commits'])}; eval {', '.join(p['eval_commits'])}; "
             f"report {p['report_commit']}",
             f"wall time: train {p['train_seconds']:.1f} s + eval {p['eval_seconds']:.1f} s = "
             f"{p['wall_seconds']:.1f} s",
             f"created: {p['created_utc']}"]
    for r in p["runs"]:
        lines.append(f"run {r['model']} seed {r['seed']}: {r['summary']} (epoch {r['checkpoint_epoch']}, "
                     f"train commit {r['train_commit']}, eval commit {r['eval_commit']}, train "
                     f"{_fmt(r['train_seconds'], 1)} s, eval {_fmt(r['eval_seconds'], 1)} s, "
                     f"{r['n_patients']} patients / {r['n_slices']} slices)")
    return lines


# ------------------------------------------------------------------------------------------------ tables
def run_models(specs: tuple[RowSpec, ...]) -> list[str]:
    """The trained runs a table reads, in row order (a chosen row reads each of its candidates)."""
    out: list[str] = []
    for spec in specs:
        out += [m for m in (spec.choose_from or (spec.model,)) if m not in out]
    return out


def _with_chosen(specs: tuple[RowSpec, ...], summaries: dict, seeds: list[int]) -> dict:
    """``summaries`` plus, for each row with ``choose_from``, per seed the candidate with the best validation PSNR
    (``best_val_psnr`` of its checkpoint: the test table never chooses), marked with ``_chosen``."""
    out = dict(summaries)
    for spec in specs:
        for s in seeds if spec.choose_from else ():
            chosen = max(spec.choose_from, key=lambda m: _num(summaries[(m, s)].get("best_val_psnr")))
            out[(spec.model, s)] = {**summaries[(chosen, s)], "_chosen": chosen}
    return out


def _rows(specs: tuple[RowSpec, ...], summaries: dict, seeds: list[int]):
    """DataFrame rows and per-seed numbers for ``specs``."""
    rows, per_seed = [], {}
    for spec in specs:
        per_seed[spec.model] = {s: {k: _num(summaries[(spec.model, s)].get(k)) for k, *_ in METRICS}
                                for s in seeds}
        row: dict[str, Any] = {"method": spec.method, "input": spec.input}
        if spec.choose_from:
            chosen = [summaries[(spec.model, s)]["_chosen"] for s in seeds]
            row["input"] = "/".join(sorted({_INPUT[m] for m in chosen}))
            row["chosen"] = " ".join(chosen)
        row.update(dict(spec.extra))
        row["model"] = spec.model
        row["n_seeds"] = len(seeds)
        for key, std_key, _, _ in METRICS:
            mean, seed_std = _mean_std([per_seed[spec.model][s][key] for s in seeds])
            patient_std = float(np.nanmean([_num(summaries[(spec.model, s)].get(std_key)) for s in seeds]))
            row[key], row[f"{key}_seed_std"], row[f"{key}_patient_std"] = mean, seed_std, patient_std
        row["paper_psnr"] = spec.paper_psnr if spec.paper_psnr is not None else math.nan
        row["paper_ssim"] = spec.paper_ssim if spec.paper_ssim is not None else math.nan
        row["paper_status"] = spec.paper_status
        row["train_seconds"] = round(sum(_num(summaries[(spec.model, s)].get("train_seconds")) for s in seeds), 1)
        row["eval_seconds"] = round(sum(_num(summaries[(spec.model, s)].get("eval_seconds")) for s in seeds), 1)
        row["commits"] = " ".join(sorted({str(summaries[(spec.model, s)].get(k)) for s in seeds
                                          for k in ("train_commit", "eval_commit")}))
        rows.append(row)
    return rows, per_seed


def _better(a: float, b: float, key: str) -> bool:
    """a strictly better than b (MAE: lower is better)."""
    return a < b if key == "mae_hu" else a > b


def _ordering_vs(per_seed: dict, seeds: list[int], baselines: tuple[str, ...], claim: str) -> dict[str, Any]:
    """Per metric and seed: does MM2CT beat the best of ``baselines`` (best chosen per seed and metric)?"""
    out: dict[str, Any] = {"claim": claim}
    for key, *_ in METRICS:
        seeds_ok = {}
        for s in seeds:
            singles = {m: per_seed[m][s][key] for m in baselines}
            best = min(singles, key=singles.get) if key == "mae_hu" else max(singles, key=singles.get)
            seeds_ok[s] = {"holds": bool(_better(per_seed["mm2ct"][s][key], singles[best], key)),
                           "best_single": best, "best_single_value": singles[best],
                           "mm2ct": per_seed["mm2ct"][s][key]}
        out[key] = {"per_seed": seeds_ok, "all_seeds": all(v["holds"] for v in seeds_ok.values())}
    return out


def _ordering_table1(per_seed: dict, seeds: list[int]) -> dict[str, Any]:
    """The issue's criterion (MM2CT above every single-modality model, CycleGAN included) and, under
    ``vs_syndiff``, the paper's own comparison (MM2CT above SynDiff, its best baseline, §4.3)."""
    out = _ordering_vs(per_seed, seeds, SINGLE_MODALITY, "MM2CT (T1+T2) > best single-modality model")
    out["vs_syndiff"] = _ordering_vs(per_seed, seeds, ("syndiff_t1", "syndiff_t2"),
                                     "MM2CT (T1+T2) > best SynDiff, the paper's best baseline")
    return out


def _orderings(ordering: dict) -> list[dict]:
    """The ordering checks of a table: its own, then Table 1's check against SynDiff when present."""
    return [ordering, *([ordering["vs_syndiff"]] if "vs_syndiff" in ordering else [])]


def _ordering_table2(per_seed: dict, seeds: list[int]) -> dict[str, Any]:
    chain = [spec.model for spec in TABLE2 if not spec.ours]
    out: dict[str, Any] = {"claim": " < ".join(chain) + " (each row better than the previous)"}
    for key, *_ in METRICS:
        seeds_ok = {s: {"holds": all(_better(per_seed[b][s][key], per_seed[a][s][key], key)
                                     for a, b in zip(chain, chain[1:])),
                        **{m: per_seed[m][s][key] for m in chain}} for s in seeds}
        out[key] = {"per_seed": seeds_ok, "all_seeds": all(v["holds"] for v in seeds_ok.values())}
    return out


def _cell(row: dict, key: str, decimals: int) -> str:
    std = row[f"{key}_seed_std"] if row["n_seeds"] > 1 else row[f"{key}_patient_std"]
    return _fmt(row[key], decimals) + ("" if not np.isfinite(std) else f" ± {_fmt(std, decimals)}")


def _markdown(title: str, rows: list[dict], specs: tuple[RowSpec, ...], ordering: dict, prov: dict,
              notes: list[str]) -> str:
    extra = [k for k, _ in specs[0].extra]
    spec_of = {s.model: s for s in specs}
    head = ["Method", "Input", *extra, *(label for _, _, label, _ in METRICS), "Paper PSNR (dB)", "Paper SSIM (%)"]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        tag = f" ({spec_of[row['model']].paper_tag})" if spec_of[row["model"]].paper_tag else ""
        paper = [_fmt(row[f"paper_{k}"], 2) + tag if np.isfinite(row[f"paper_{k}"]) else "–"
                 for k in ("psnr", "ssim")]
        cells = [row["method"], row["input"], *(row[k] for k in extra),
                 *(_cell(row, key, d) for key, _, _, d in METRICS), *paper]
        lines.append("| " + " | ".join(cells) + " |")
    n_seeds = len(prov["seeds"])
    lines += ["", ("Values: mean over %d seeds ± std across seeds." % n_seeds) if n_seeds > 1 else
              "Values: one seed; ± is the std across test patients (per-patient means).",
              "PSNR / SSIM (%): paper style — each slice mapped to [0, 1] and divided by its maximum, data range 1, "
              "mean over all test slices (method.md §8.5). MAE / PSNR HU / SSIM HU: SynthRAD2023 style in the "
              "body mask, window [-1024, 3000] HU, mean over test patients (data.md §2.3).", ""]
    for order in _orderings(ordering):
        lines.append(f"**Ordering ({order['claim']})**, per seed:")
        lines.append("")
        for key, _, label, _ in METRICS:
            per = order[key]["per_seed"]
            verdict = "holds for every seed" if order[key]["all_seeds"] else "does NOT hold for every seed"
            lines.append(f"- {label}: {verdict} (" + ", ".join(
                f"seed {s}: {'yes' if v['holds'] else 'no'}" for s, v in per.items()) + ")")
        lines.append("")
    lines.append("Paper numbers: " + "; ".join(f"{r['method']} ({r['input']}): {r['paper_status']}"
                                                for r in rows) + ".")
    lines += [*(f"{n}" for n in notes), "", "## Provenance", ""]
    lines += [f"- {ln}" for ln in _provenance_lines(prov)]
    return "\n".join(lines) + "\n"


def _csv(rows: list[dict], prov: dict, ordering: dict) -> str:
    import pandas as pd

    head = [f"# {ln}" for ln in _provenance_lines(prov)]
    for order in _orderings(ordering):
        for key, _, label, _ in METRICS:
            head.append(f"# ordering {order['claim']} on {key}: "
                        f"{'holds' if order[key]['all_seeds'] else 'does not hold'} for every seed ("
                        + ", ".join(f"seed {s}: {'yes' if v['holds'] else 'no'}"
                                    for s, v in order[key]["per_seed"].items()) + ")")
    buf = io.StringIO()
    pd.DataFrame(rows).to_csv(buf, index=False)
    return "\n".join(head) + "\n" + buf.getvalue()


def _build(ws: Workspace, name: str, label: str, title: str, specs: tuple[RowSpec, ...], ordering_fn, seeds,
           write: bool, notes: list[str]) -> Table:
    import pandas as pd

    seeds = [int(s) for s in (ws.cfg.train.seeds if seeds is None else seeds)]
    summaries = load_summaries(ws, run_models(specs), seeds)
    rows, per_seed = _rows(specs, _with_chosen(specs, summaries, seeds), seeds)
    ordering = ordering_fn(per_seed, seeds)
    prov = provenance(ws, summaries, label)
    md = _markdown(title, rows, specs, ordering, prov, notes)
    table = Table(name, pd.DataFrame(rows), md, ordering, prov, per_seed)
    if write:
        out = Path(ws.reports_dir)
        out.mkdir(parents=True, exist_ok=True)
        sidecar = {"table": name, "rows": rows, "per_seed": {m: {str(s): v for s, v in d.items()}
                                                             for m, d in per_seed.items()},
                   "ordering": _jsonable(ordering), "provenance": prov}
        table.paths = {
            "csv": write_text(out / f"{name}.csv", _csv(rows, prov, ordering)),
            "md": write_text(out / f"{name}.md", md),
            "json": write_text(out / f"{name}.json", json.dumps(_jsonable(sidecar), indent=2) + "\n"),
        }
    return table


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def table1(ws: Workspace, seeds: list[int] | None = None, write: bool = True) -> Table:
    """Table 1: CycleGAN and SynDiff (T1 -> CT, T2 -> CT) vs MM2CT (T1 + T2 -> CT), the paper's numbers beside."""
    return _build(ws, "table1", "Table 1", f"Table 1 — MR -> CT on the test patients (profile {ws.profile})", TABLE1,
                  _ordering_table1, seeds, write,
                  ["", "Paper: Table 1 itself was not recovered (method.md §1.4); CycleGAN's numbers are unknown."])


def table2(ws: Workspace, seeds: list[int] | None = None, write: bool = True) -> Table:
    """Table 2: MM2CT ablation of the Mamba fusion module and dynamic enhancement (DE), paper numbers beside."""
    return _build(ws, "table2", "Table 2",
                  f"Table 2 — ablation of the Mamba fusion module and DE (profile {ws.profile})", TABLE2,
                  _ordering_table2, seeds, write,
                  ["", "Row 1 is the paper's: its numbers equal the paper's best single-modality SynDiff row, so "
                       "it is Table 1's SynDiff (T1 or T2, whichever has the better validation PSNR in each seed; "
                       "not trained again; method.md open choice 23). The conv-only fusion (shared stem, average, "
                       "output convs, no Mamba and no DE) is our extra row and is left out of the ordering check."])


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
def _figure_summaries(ws: Workspace, models: list[str], seed: int) -> dict:
    """``{(model, seed): summary.json or {}}`` with ``_path`` naming the predictions: the provenance of a figure
    (summaries are optional there; the predictions are what it shows)."""
    out = {}
    for m in models:
        path = _eval_dir(ws, m, seed) / "summary.json"
        out[(m, seed)] = {**(json.loads(path.read_text()) if path.is_file() else {}),
                          "_path": str(path.parent / "predictions.npz")}
    return out


def load_predictions(ws: Workspace, models: list[str], seed: int | None = None) -> dict[str, dict[str, np.ndarray]]:
    """``{model: arrays of <run>/eval/predictions.npz}``; MissingRunError lists runs without predictions."""
    seed = int(ws.cfg.train.seeds[0] if seed is None else seed)
    _missing(ws, [(m, seed) for m in models], "predictions.npz")
    out = {}
    for m in models:
        path = _eval_dir(ws, m, seed) / "predictions.npz"
        try:
            with np.load(path, allow_pickle=False) as z:
                out[m] = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: unreadable predictions ({e})") from None
        need = {"pred", "ct", "mask", "t1", "t2", "pred_hu", "ct_hu", "patient", "slice"} - set(out[m])
        if need:
            raise ValueError(f"{path}: lacks {sorted(need)}; re-run `{_make_command(ws, m, seed, True)}`")
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
            bottom[c].set_title(f"|error|, MAE {_fmt(mae, 0)} HU", fontsize=6)
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

    summaries = _figure_summaries(ws, models, seed)
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
        text = caption + "\n\n" + "\n".join(_provenance_lines(prov)) + "\n"
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

    models = list(models or FUSION_MODELS)
    seed = int(ws.cfg.train.seeds[0] if seed is None else seed)
    preds = load_predictions(ws, models, seed)
    stale = [m for m in models if "fused" not in preds[m]]
    if stale:
        raise ValueError("no fused image in the predictions of " + ", ".join(stale) + " (not a fusion model, or "
                         "evaluated before mm2ct saved it); re-run "
                         + "; ".join(f"`{_make_command(ws, m, seed, True)}`" for m in stale))
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
    summaries = _figure_summaries(ws, models, seed)
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
        text = caption + "\n\n" + "\n".join(_provenance_lines(prov)) + "\n"
        result.paths = {
            "png": _atomic_savefig(fig, out / "fused.png", "png",
                                   {"Title": "MM2CT fused images", "Description": text, "Software": "mm2ct.reports"}),
            "txt": write_text(out / "fused.txt", text),
        }
    return result
