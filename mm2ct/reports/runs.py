"""The evaluated runs behind a report: where their outputs lie, which are missing, and the provenance of the numbers.

A report reads what ``mm2ct.evaluate.evaluate`` writes for each run ``runs/<profile>/<model>[-seed<S>]/eval/``
(``summary.json``, ``predictions.npz``); it never trains or evaluates (``mm2ct.pipeline`` does, for notebooks).
Every path a report records is relative to the work directory ``ws.root`` (or the repository):
``mm2ct.provenance.portable_path``, so a committed report names ``runs/demo/mm2ct/eval/summary.json``.
"""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from mm2ct.checkpoints import run_dir
from mm2ct.provenance import git_commit, portable_path
from mm2ct.template import TEMPLATE, template_dir
from mm2ct.workspace import Workspace


class MissingRunError(FileNotFoundError):
    """Runs a report needs have no evaluation; the message names each run folder and the command that makes it."""


def num(v: Any) -> float:
    """``v`` as a float; nan when it is absent or not a number."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def fmt(v: float, decimals: int) -> str:
    """A number with ``decimals`` decimals, ``n/a`` when it is not finite."""
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.{decimals}f}"


def make_command(ws: Workspace, model: str, seed: int, trained: bool) -> str:
    """The shell command that (trains and) evaluates one run."""
    data = f" --data-dir {ws.cfg.data.root}" if ws.cfg.data.root else ""
    args = f"--profile {ws.profile} --model {model} --seed {seed}{data}"
    ev = f"mm2ct evaluate {args}"
    return ev if trained else f"mm2ct train {args} && {ev}"


def eval_dir(ws: Workspace, model: str, seed: int) -> Path:
    """``<run>/eval``: where ``mm2ct.evaluate.evaluate`` writes a run's outputs (the template: one folder for
    every seed)."""
    return (template_dir(ws) if model == TEMPLATE else run_dir(ws, model, seed)) / "eval"


def require(ws: Workspace, wanted: list[tuple[str, int]], filename: str) -> None:
    """Raise MissingRunError listing every (model, seed) whose eval folder lacks ``filename``."""
    lines = []
    for model, seed in wanted:
        ev = eval_dir(ws, model, seed)
        if not (ev / filename).is_file():
            trained = model == TEMPLATE or (ev.parent / "best.pt").is_file()
            why = "needs no training, not evaluated" if model == TEMPLATE else \
                "trained but not evaluated" if trained else "not trained"
            lines.append(f"  {ev.parent} ({model}, seed {seed}; {why}): no {ev / filename}\n"
                         f"      make it with: {make_command(ws, model, seed, trained)}")
    if lines:
        raise MissingRunError(f"{len(lines)} run(s) needed for this report are missing under {ws.runs_dir}:\n"
                              + "\n".join(lines))


def missing_runs(ws: Workspace, models: list[str], seeds: list[int] | None = None,
                 filename: str = "summary.json") -> list[tuple[str, int]]:
    """(model, seed) pairs whose evaluation output ``filename`` is absent or older than the run's ``best.pt``, or
    whose summary.json comes from an older ``mm2ct.evaluate.EVAL_FORMAT``: what a notebook must train and/or
    evaluate before building a report (``mm2ct.pipeline.ensure_evaluated``; this package never does)."""
    from mm2ct.evaluate import EVAL_FORMAT

    seeds = [int(s) for s in (ws.cfg.train.seeds if seeds is None else seeds)]
    out = []
    for m in models:
        for s in seeds:
            ev = eval_dir(ws, m, s)
            best = ev.parent / "best.pt"
            f = ev / filename
            if not f.is_file() or (best.is_file() and best.stat().st_mtime > f.stat().st_mtime) \
                    or eval_format(ev / "summary.json") < EVAL_FORMAT:
                out.append((m, s))
    return out


def eval_format(path: Path) -> int:
    """The ``eval_format`` of a summary.json (1 before it was recorded; 0 when absent or unreadable)."""
    try:
        return int(json.loads(path.read_text()).get("eval_format", 1))
    except (OSError, ValueError, AttributeError):
        return 0


def load_summaries(ws: Workspace, models: list[str], seeds: list[int] | tuple[int, ...]) -> dict:
    """``{(model, seed): summary dict}`` from ``<run>/eval/summary.json``; MissingRunError lists what is absent.
    Each summary gains ``_path``, the file it was read from."""
    wanted = [(m, int(s)) for m in models for s in seeds]
    require(ws, wanted, "summary.json")
    out = {}
    for m, s in wanted:
        path = eval_dir(ws, m, s) / "summary.json"
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: unreadable evaluation summary ({e}); re-run "
                             f"`{make_command(ws, m, s, True)}`") from None
        if summary.get("profile") not in (None, ws.profile):
            raise ValueError(f"{path}: evaluated under profile {summary.get('profile')!r}, not {ws.profile!r}")
        summary["_path"] = str(path)
        out[(m, s)] = summary
    return out


def figure_summaries(ws: Workspace, models: list[str], seed: int) -> dict:
    """``{(model, seed): summary.json or {}}`` with ``_path`` naming the predictions: the provenance of a figure
    (summaries are optional there; the predictions are what it shows)."""
    out = {}
    for m in models:
        path = eval_dir(ws, m, seed) / "summary.json"
        out[(m, seed)] = {**(json.loads(path.read_text()) if path.is_file() else {}),
                          "_path": str(path.parent / "predictions.npz")}
    return out


def provenance(ws: Workspace, summaries: dict, what: str) -> dict[str, Any]:
    """Who made the numbers: profile, data, seeds, commits and wall time of every run, plus the report's commit.
    Paths (summaries, checkpoints, data) are relative to ``ws.root`` or the repository (``portable_path``)."""
    def rel(p: Any) -> str | None:
        return portable_path(p, ws.root)

    runs, seen = [], set()
    for (m, s), sm in summaries.items():
        if sm["_path"] in seen:   # one evaluation behind several seeds (the template): counted once
            continue
        seen.add(sm["_path"])
        runs.append({"model": m, "seed": s, "summary": rel(sm["_path"]), "checkpoint": rel(sm.get("checkpoint")),
                     "checkpoint_epoch": sm.get("checkpoint_epoch"), "train_commit": sm.get("train_commit"),
                     "eval_commit": sm.get("eval_commit"), "train_seconds": num(sm.get("train_seconds")),
                     "eval_seconds": num(sm.get("eval_seconds")), "n_slices": sm.get("n_slices"),
                     "n_patients": sm.get("n_patients"), "data": rel(sm.get("data")),
                     "train_machine": _machine_text(sm.get("train_machine")),
                     "eval_machine": _machine_text(sm.get("eval_machine"))})
    train_s = sum(r["train_seconds"] for r in runs if np.isfinite(r["train_seconds"]))
    eval_s = sum(r["eval_seconds"] for r in runs if np.isfinite(r["eval_seconds"]))
    return {
        "artefact": what, "profile": ws.profile,
        "data": sorted({str(r["data"]) for r in runs}) or [rel(ws.data_root)],
        "seeds": sorted({r["seed"] for r in runs}),
        "train_commits": sorted({str(r["train_commit"]) for r in runs}),
        "machines": sorted({m for r in runs for m in (r["train_machine"], r["eval_machine"]) if m}),
        "eval_commits": sorted({str(r["eval_commit"]) for r in runs}),
        "report_commit": git_commit(),
        "train_seconds": round(train_s, 1), "eval_seconds": round(eval_s, 1),
        "wall_seconds": round(train_s + eval_s, 1),
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "runs": runs,
    }


def _machine_text(m: dict | None) -> str | None:
    """``Intel(R) Xeon(R) ..., 1 torch thread(s), torch 2.13.0`` from a recorded ``mm2ct.provenance.machine()``."""
    if not m:
        return None
    where = m.get("cuda") or m.get("cpu")
    return f"{where}, {m.get('threads')} torch thread(s), torch {m.get('torch')}"


def provenance_lines(p: dict[str, Any]) -> list[str]:
    """``provenance`` as text lines (the ``#`` lines of a CSV, the block of a Markdown table, a caption file)."""
    lines = [f"{p['artefact']} — profile {p['profile']}",
             f"data: {', '.join(p['data'])}",
             f"seeds: {', '.join(map(str, p['seeds']))}",
             f"git commits: train {', '.join(p['train_commits'])}; eval {', '.join(p['eval_commits'])}; "
             f"report {p['report_commit']}",
             f"wall time: train {p['train_seconds']:.1f} s + eval {p['eval_seconds']:.1f} s = "
             f"{p['wall_seconds']:.1f} s",
             f"machines (training and evaluation): {'; '.join(p.get('machines') or ['not recorded'])}",
             f"created: {p['created_utc']}"]
    for r in p["runs"]:
        epoch = "no checkpoint" if r["checkpoint"] is None else f"epoch {r['checkpoint_epoch']}"
        lines.append(f"run {r['model']} seed {r['seed']}: {r['summary']} ({epoch}, "
                     f"train commit {r['train_commit']}, eval commit {r['eval_commit']}, train "
                     f"{fmt(r['train_seconds'], 1)} s, eval {fmt(r['eval_seconds'], 1)} s, "
                     f"{r['n_patients']} patients / {r['n_slices']} slices)")
    return lines
