"""Table 1 and Table 2 of MM2CT from evaluated runs, beside the paper's numbers (docs/method.md §1.4, §1.5).

Columns: paper-style PSNR (dB) and SSIM (%) on max-normalised [0, 1] slices, mean over all test slices
(method.md §8.5, open choice 20), and SynthRAD2023-style MAE / PSNR / SSIM in HU inside the body mask (data.md
§2.3), mean over test patients.  With one seed the "±" is the std across test patients; with several seeds
(``train.seeds``) the value is the mean over seeds and "±" the std across seeds (ddof 1).  The ordering the
paper claims (MM2CT above the best single-modality model; each Table 2 row above the previous one) is checked for
every seed, on every column but input usage.

Every table also shows bone Dice (CT > 200 HU inside the body mask) and input usage (Pearson r of sCT - template and
CT - template in the mask), per test patient, mean ± std across patients (``mm2ct.metrics``; docs/data.md §9).
Table 1 ends with the template (``mm2ct.template``: the mean training CT, no MR) and checks, per seed, that every
model beats it on MAE and on bone Dice: a model that does not has not learned to use its input.

Each table is written as ``<name>.csv`` (``#`` provenance lines on top: ``pandas.read_csv(path, comment="#")``),
``<name>.md`` and ``<name>.json`` (rows, per-seed numbers, ordering, provenance), each atomically.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mm2ct.atomic import write_text
from mm2ct.metrics import BONE_HU
from mm2ct.reports.paper import INPUT_OF, SINGLE_MODALITY, TABLE1, TABLE2, TEMPLATE_KEYS, RowSpec
from mm2ct.reports.runs import fmt, load_summaries, num, provenance, provenance_lines
from mm2ct.template import TEMPLATE
from mm2ct.workspace import Workspace

# Summary keys shown in the tables: (summary key, key of its across-patient std, column label, decimals)
METRICS: tuple[tuple[str, str, str, int], ...] = (
    ("psnr", "psnr_patient_std", "PSNR (dB)", 2),
    ("ssim", "ssim_patient_std", "SSIM (%)", 2),
    ("mae_hu", "mae_hu_std", "MAE (HU)", 1),
    ("psnr_hu", "psnr_hu_std", "PSNR HU (dB)", 2),
    ("ssim_hu", "ssim_hu_std", "SSIM HU", 4),
    ("dice_bone", "dice_bone_std", "Bone Dice", 3),
    ("input_usage", "input_usage_std", "Input usage r", 2),
)
ORDER_KEYS = tuple(key for key, *_ in METRICS if key != "input_usage")   # the paper's orderings are checked on
LOWER_IS_BETTER = ("mae_hu",)
NOTES = [
    f"Bone Dice: Dice overlap of bone, CT > {BONE_HU:.0f} HU, between synthetic and true CT inside the body mask of "
    "the slice cache (the mask every HU metric uses), per test patient over its slices, mean over patients; the "
    "phantom-sized version of SynthRAD 2025's segmentation-based geometry metrics. Input usage r: Pearson r, inside "
    "the body mask, between sCT − template and CT − template, the template being the mean training CT: 0 for a "
    "model that ignores its MR (the template itself), 1 when the prediction departs from the template exactly as "
    "the patient does.",
]


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

    def ordering_lines(self) -> list[str]:
        """Every ordering check of the table as text: its claim, then per metric whether it holds in every seed."""
        return ordering_lines(self.ordering)

    def ordering_text(self) -> str:
        """``ordering_lines`` joined by newlines (what a notebook prints)."""
        return "\n".join(self.ordering_lines())


# ------------------------------------------------------------------------------------------------ rows
def profile_rows(specs: tuple[RowSpec, ...], ws: Workspace | None = None) -> tuple[RowSpec, ...]:
    """The rows a workspace's profile has: a row of ours that is a trainable model (the conv-only fusion) only when
    the profile trains it (``train.models``); the paper's rows and the template always."""
    from mm2ct.translators import MODELS

    if ws is None:
        return specs
    return tuple(s for s in specs if not (s.ours and s.model in MODELS and s.model not in ws.cfg.train.models))


def run_models(specs: tuple[RowSpec, ...], ws: Workspace | None = None) -> list[str]:
    """The trained runs a table reads, in row order (a chosen row reads each of its candidates); with ``ws``, only
    the rows its profile has (``profile_rows``)."""
    out: list[str] = []
    for spec in profile_rows(specs, ws):
        out += [m for m in (spec.choose_from or (spec.model,)) if m not in out]
    return out


def _with_chosen(specs: tuple[RowSpec, ...], summaries: dict, seeds: list[int]) -> dict:
    """``summaries`` plus, for each row with ``choose_from``, per seed the candidate with the best validation PSNR
    (``best_val_psnr`` of its checkpoint: the test table never chooses), marked with ``_chosen``."""
    out = dict(summaries)
    for spec in specs:
        for s in seeds if spec.choose_from else ():
            chosen = max(spec.choose_from, key=lambda m: num(summaries[(m, s)].get("best_val_psnr")))
            out[(spec.model, s)] = {**summaries[(chosen, s)], "_chosen": chosen}
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else math.nan)


def _rows(specs: tuple[RowSpec, ...], summaries: dict, seeds: list[int]):
    """DataFrame rows and per-seed numbers for ``specs`` (the template has no seed: its row is one evaluation,
    shown with its spread across patients)."""
    rows, per_seed = [], {}
    for spec in specs:
        per_seed[spec.model] = {s: {k: num(summaries[(spec.model, s)].get(k)) for k, *_ in METRICS}
                                for s in seeds}
        row_seeds = seeds[:1] if spec.model == TEMPLATE else seeds
        row: dict[str, Any] = {"method": spec.method, "input": spec.input}
        if spec.choose_from:
            chosen = [summaries[(spec.model, s)]["_chosen"] for s in row_seeds]
            row["input"] = "/".join(sorted({INPUT_OF[m] for m in chosen}))
            row["chosen"] = " ".join(chosen)
        row.update(dict(spec.extra))
        row["model"] = spec.model
        row["n_seeds"] = len(row_seeds)
        for key, std_key, _, _ in METRICS:
            mean, seed_std = _mean_std([per_seed[spec.model][s][key] for s in row_seeds])
            patient_std = float(np.nanmean([num(summaries[(spec.model, s)].get(std_key)) for s in row_seeds]))
            row[key], row[f"{key}_seed_std"], row[f"{key}_patient_std"] = mean, seed_std, patient_std
        row["paper_psnr"] = spec.paper_psnr if spec.paper_psnr is not None else math.nan
        row["paper_ssim"] = spec.paper_ssim if spec.paper_ssim is not None else math.nan
        row["paper_status"] = spec.paper_status
        row["train_seconds"] = round(sum(num(summaries[(spec.model, s)].get("train_seconds")) for s in row_seeds), 1)
        row["eval_seconds"] = round(sum(num(summaries[(spec.model, s)].get("eval_seconds")) for s in row_seeds), 1)
        row["commits"] = " ".join(sorted({str(summaries[(spec.model, s)].get(k)) for s in row_seeds
                                          for k in ("train_commit", "eval_commit")}))
        rows.append(row)
    return rows, per_seed


# ------------------------------------------------------------------------------------------------ orderings
def _better(a: float, b: float, key: str) -> bool:
    """a strictly better than b (MAE: lower is better); nan is never better."""
    return _margin(a, b, key) > 0


def _margin(a: float, b: float, key: str) -> float:
    """How much better a is than b (positive: better; MAE: lower is better)."""
    return float(b - a) if key in LOWER_IS_BETTER else float(a - b)


def _over_seeds(seeds_ok: dict) -> dict[str, Any]:
    """A check's result over seeds from each seed's ``holds`` and ``margin`` (positive when the claim holds):
    ``all_seeds``; ``verdict`` "holds" / "fails" when every seed agrees and the mean margin exceeds the margins'
    standard deviation across seeds (ddof 1), else "within the seeds' spread"; with one seed, "holds" / "fails"
    for that seed alone (``n_seeds`` 1: no spread to compare with); the margins' mean and std."""
    holds = [v["holds"] for v in seeds_ok.values()]
    margins = np.asarray([v["margin"] for v in seeds_ok.values()], dtype=float)
    mean = float(np.nanmean(margins)) if np.isfinite(margins).any() else math.nan
    std = float(np.nanstd(margins, ddof=1)) if np.isfinite(margins).sum() > 1 else math.nan
    if len(holds) == 1:
        verdict = "holds" if holds[0] else "fails"
    elif all(holds) and mean > std:
        verdict = "holds"
    elif not any(holds) and -mean > std:
        verdict = "fails"
    else:
        verdict = "within the seeds' spread"
    return {"per_seed": seeds_ok, "all_seeds": all(holds), "verdict": verdict, "n_seeds": len(holds),
            "margin_mean": mean, "margin_std": std}


def _ordering_vs(per_seed: dict, seeds: list[int], baselines: tuple[str, ...], claim: str) -> dict[str, Any]:
    """Per metric and seed: does MM2CT beat the best of ``baselines`` (best chosen per seed and metric)?"""
    out: dict[str, Any] = {"claim": claim}
    for key in ORDER_KEYS:
        seeds_ok = {}
        for s in seeds:
            singles = {m: per_seed[m][s][key] for m in baselines}
            best = min(singles, key=singles.get) if key in LOWER_IS_BETTER else max(singles, key=singles.get)
            seeds_ok[s] = {"holds": bool(_better(per_seed["mm2ct"][s][key], singles[best], key)),
                           "margin": _margin(per_seed["mm2ct"][s][key], singles[best], key),
                           "best_single": best, "best_single_value": singles[best],
                           "mm2ct": per_seed["mm2ct"][s][key]}
        out[key] = _over_seeds(seeds_ok)
    return out


def _ordering_table1(per_seed: dict, seeds: list[int]) -> dict[str, Any]:
    """The issue's criterion (MM2CT above every single-modality model, CycleGAN included) and, under
    ``vs_syndiff``, the paper's own comparison (MM2CT above SynDiff, its best baseline, §4.3)."""
    out = _ordering_vs(per_seed, seeds, SINGLE_MODALITY, "MM2CT (T1+T2) > best single-modality model")
    out["vs_syndiff"] = _ordering_vs(per_seed, seeds, ("syndiff_t1", "syndiff_t2"),
                                     "MM2CT (T1+T2) > best SynDiff, the paper's best baseline")
    out["vs_template"] = _ordering_vs_template(per_seed, seeds, [spec.model for spec in TABLE1
                                                                 if spec.model != TEMPLATE])
    return out


def _ordering_vs_template(per_seed: dict, seeds: list[int], models: list[str]) -> dict[str, Any]:
    """Per seed, on MAE and bone Dice: is every model strictly better than the template (the mean training CT)?
    ``not_better`` names the models that are not."""
    out: dict[str, Any] = {"claim": "every model > template (no MR)"}
    for key in TEMPLATE_KEYS:
        seeds_ok = {}
        for s in seeds:
            t = per_seed[TEMPLATE][s][key]
            not_better = [m for m in models if not _better(per_seed[m][s][key], t, key)]
            seeds_ok[s] = {"holds": not not_better, "template": t, "not_better": not_better,
                           "margin": min(_margin(per_seed[m][s][key], t, key) for m in models)}
        out[key] = _over_seeds(seeds_ok)
    return out


def _ordering_table2(per_seed: dict, seeds: list[int]) -> dict[str, Any]:
    chain = [spec.model for spec in TABLE2 if not spec.ours]
    out: dict[str, Any] = {"claim": " < ".join(chain) + " (each row better than the previous)"}
    for key in ORDER_KEYS:
        seeds_ok = {s: {"holds": all(_better(per_seed[b][s][key], per_seed[a][s][key], key)
                                     for a, b in zip(chain, chain[1:])),
                        "margin": min(_margin(per_seed[b][s][key], per_seed[a][s][key], key)
                                      for a, b in zip(chain, chain[1:])),
                        **{m: per_seed[m][s][key] for m in chain}} for s in seeds}
        out[key] = _over_seeds(seeds_ok)
    return out


def orderings(ordering: dict) -> list[dict]:
    """The ordering checks of a table: its own, then Table 1's checks against SynDiff and the template."""
    return [ordering, *(ordering[k] for k in ("vs_syndiff", "vs_template") if k in ordering)]


def _verdicts(order: dict) -> list[tuple[str, str, str, str]]:
    """(metric key, label, verdict, per-seed text with the verdict over seeds) for each metric a check covers."""
    out = []
    for key, _, label, _ in METRICS:
        if key not in order:
            continue
        o = order[key]
        per = o["per_seed"]
        verdict = "holds for every seed" if o["all_seeds"] else "does NOT hold for every seed"
        seeds = ", ".join(f"seed {s}: {'yes' if v['holds'] else 'no'}"
                          + (f" (not better: {', '.join(v['not_better'])})" if v.get("not_better") else "")
                          for s, v in per.items())
        d = _decimals(key)
        if o["n_seeds"] > 1:
            over = f"; over seeds: {o['verdict']}, margin {o['margin_mean']:+.{d}f} ± {o['margin_std']:.{d}f}"
        else:
            over = f"; one seed: margin {o['margin_mean']:+.{d}f}, no spread to tell it from noise"
        out.append((key, label, verdict, f"({seeds}){over}"))
    return out


def _decimals(key: str) -> int:
    return next(d for k, _, _, d in METRICS if k == key)


def ordering_lines(ordering: dict) -> list[str]:
    """Every ordering check of a table (``Table.ordering``) as text: the claim, then one indented line per metric
    saying whether it holds in every seed, with the verdict of each seed."""
    lines = []
    for order in orderings(ordering):
        lines.append(order["claim"])
        lines += [f"  {label:14s} {verdict} {seeds}" for _, label, verdict, seeds in _verdicts(order)]
    return lines


# ------------------------------------------------------------------------------------------------ text
def _cell(row: dict, key: str, decimals: int) -> str:
    std = row[f"{key}_seed_std"] if row["n_seeds"] > 1 else row[f"{key}_patient_std"]
    return fmt(row[key], decimals) + ("" if not np.isfinite(std) else f" ± {fmt(std, decimals)}")


def _markdown(title: str, rows: list[dict], specs: tuple[RowSpec, ...], ordering: dict, prov: dict,
              notes: list[str]) -> str:
    extra = [k for k, _ in specs[0].extra]
    spec_of = {s.model: s for s in specs}
    head = ["Method", "Input", *extra, *(label for _, _, label, _ in METRICS), "Paper PSNR (dB)", "Paper SSIM (%)"]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        tag = f" ({spec_of[row['model']].paper_tag})" if spec_of[row["model"]].paper_tag else ""
        paper = [fmt(row[f"paper_{k}"], 2) + tag if np.isfinite(row[f"paper_{k}"]) else "–"
                 for k in ("psnr", "ssim")]
        cells = [row["method"], row["input"], *(row[k] for k in extra),
                 *(_cell(row, key, d) for key, _, _, d in METRICS), *paper]
        lines.append("| " + " | ".join(cells) + " |")
    n_seeds = len(prov["seeds"])
    seedless = " The template has no seed: one evaluation, ± across test patients." \
        if n_seeds > 1 and TEMPLATE in spec_of else ""
    lines += ["", (f"Values: mean over {n_seeds} seeds ± std across seeds.{seedless}") if n_seeds > 1 else
              "Values: one seed; ± is the std across test patients (per-patient means).",
              "PSNR / SSIM (%): paper style — each slice mapped to [0, 1] and divided by its maximum, data range 1, "
              "mean over all test slices (method.md §8.5). MAE / PSNR HU / SSIM HU: SynthRAD2023 style in the "
              "body mask, window [-1024, 3000] HU, mean over test patients (data.md §2.3).", *NOTES, ""]
    for order in orderings(ordering):
        lines.append(f"**Ordering ({order['claim']})**, per seed:")
        lines.append("")
        lines += [f"- {label}: {verdict} {seeds}" for _, label, verdict, seeds in _verdicts(order)]
        lines.append("")
    lines.append("Paper numbers: " + "; ".join(f"{r['method']} ({r['input']}): {r['paper_status']}"
                                                for r in rows) + ".")
    lines += [*(f"{n}" for n in notes), "", "## Provenance", ""]
    lines += [f"- {ln}" for ln in provenance_lines(prov)]
    return "\n".join(lines) + "\n"


def _csv(rows: list[dict], prov: dict, ordering: dict) -> str:
    import pandas as pd

    head = [f"# {ln}" for ln in provenance_lines(prov)]
    for order in orderings(ordering):
        for key, _, verdict, seeds in _verdicts(order):
            holds = "holds" if order[key]["all_seeds"] else "does not hold"
            head.append(f"# ordering {order['claim']} on {key}: {holds} for every seed {seeds}")
    buf = io.StringIO()
    pd.DataFrame(rows).to_csv(buf, index=False)
    return "\n".join(head) + "\n" + buf.getvalue()


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


# ------------------------------------------------------------------------------------------------ builders
def _build(ws: Workspace, name: str, label: str, title: str, specs: tuple[RowSpec, ...], ordering_fn, seeds,
           write: bool, notes: list[str]) -> Table:
    import pandas as pd

    seeds = [int(s) for s in (ws.cfg.train.seeds if seeds is None else seeds)]
    left_out = [s for s in specs if s not in profile_rows(specs, ws)]
    if left_out:
        notes = [*notes, "Not in this profile (its train.models): " + ", ".join(
            f"{s.method} ({s.model})" for s in left_out) + "."]
    specs = profile_rows(specs, ws)
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


def table1(ws: Workspace, seeds: list[int] | None = None, write: bool = True) -> Table:
    """Table 1: CycleGAN and SynDiff (T1 -> CT, T2 -> CT) vs MM2CT (T1 + T2 -> CT), the paper's numbers beside."""
    return _build(ws, "table1", "Table 1", f"Table 1 — MR -> CT on the test patients (profile {ws.profile})", TABLE1,
                  _ordering_table1, seeds, write,
                  ["", "Paper: Table 1 itself was not recovered (method.md §1.4); CycleGAN's numbers are unknown. "
                       "The template (no MR) is our extra row: the mean CT of the training slices, evaluated like "
                       "every model; a model that does not beat it on MAE and bone Dice has not learned to use its "
                       "input."])


def table2(ws: Workspace, seeds: list[int] | None = None, write: bool = True) -> Table:
    """Table 2: MM2CT ablation of the Mamba fusion module and dynamic enhancement (DE), paper numbers beside."""
    return _build(ws, "table2", "Table 2",
                  f"Table 2 — ablation of the Mamba fusion module and DE (profile {ws.profile})", TABLE2,
                  _ordering_table2, seeds, write,
                  ["", "Row 1 is the paper's: its numbers equal the paper's best single-modality SynDiff row, so "
                       "it is Table 1's SynDiff (T1 or T2, whichever has the better validation PSNR in each seed; "
                       "not trained again; method.md open choice 23). The conv-only fusion (shared stem, average, "
                       "output convs, no Mamba and no DE) is our extra row and is left out of the ordering check. "
                       "The template (no MR), the floor every model has to beat, is in Table 1."])
