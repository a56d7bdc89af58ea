"""The steps notebooks 07-10 share before they build a report: which profile's runs to show, and train-if-missing
then evaluate.

    ws = runs_to_show(ws, models, prefer="demo")   # under smoke: demo's trained runs when they all exist
    ensure_evaluated(ws, models)                   # trains what was never trained, evaluates what is stale

This module may import the training loop; ``mm2ct.reports`` and ``mm2ct.evaluate`` never import it (and never
import this module), so that building a report can never start a training run.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from mm2ct.checkpoints import run_dir
from mm2ct.config import load_profile
from mm2ct.provenance import portable_path
from mm2ct.template import TEMPLATE
from mm2ct.workspace import Workspace, resolve


def _untrained(ws: Workspace, models: Sequence[str], seeds: Sequence[int] | None = None) -> list[tuple[str, int]]:
    """(model, seed) pairs without a ``best.pt`` (the template needs none)."""
    seeds = [int(s) for s in (ws.cfg.train.seeds if seeds is None else seeds)]
    return [(m, s) for m in models if m != TEMPLATE for s in seeds
            if not (run_dir(ws, m, s) / "best.pt").is_file()]


def runs_to_show(ws: Workspace, models: Sequence[str], prefer: str | None = "demo",
                 reports_dir: str | os.PathLike | None = None, log: Callable[..., None] | None = print) -> Workspace:
    """The workspace whose runs a notebook shows, said in one line through ``log``.

    Under ``smoke`` (every notebook's default: a few training steps, numbers without meaning) on the embedded
    phantom, the runs of profile ``prefer`` when every one of ``models`` is trained there for each of its seeds
    (``runs/<prefer>/<model>/best.pt``; notebook 06 or ``make reproduce`` make them): a user who opens a notebook
    after a reproduction sees trained models. Otherwise, and always with ``prefer=None``, another profile or a data
    folder of one's own, ``ws`` itself. The preferred profile's artefacts go to its own reports folder, or to
    ``reports_dir`` (the notebook's parameter) when one is given."""
    say = log or (lambda *a, **k: None)
    if ws.profile != "smoke" or not prefer or prefer == ws.profile or not ws.uses_phantom:
        say(f"showing profile {ws.profile}'s runs ({portable_path(ws.runs_dir, ws.root)})")
        return ws
    other = Workspace(cfg=load_profile(prefer), root=ws.root)
    missing = _untrained(other, models)
    where = portable_path(other.runs_dir, ws.root)
    if missing:
        say(f"showing profile smoke's runs ({portable_path(ws.runs_dir, ws.root)}; a few training steps, numbers "
            f"without meaning): profile {prefer} has no trained " + ", ".join(f"{m} (seed {s})" for m, s in missing)
            + f" under {where}/ (notebook 06 with profile = \"{prefer}\", or `make reproduce`, trains them)")
        return ws
    say(f"showing profile {prefer}'s trained runs ({where}) instead of smoke's (prefer_trained = \"{prefer}\"; "
        "set it to None for the smoke runs)")
    return resolve(prefer, None, reports_dir, root=ws.root)


def ensure_evaluated(ws: Workspace, models: Sequence[str], seeds: Sequence[int] | None = None, train: bool = True,
                     filename: str = "summary.json", log: Callable[..., None] | None = print) -> list[tuple[str, int]]:
    """Make every (model, seed) of ``models`` x ``seeds`` (default: the profile's) have an up-to-date evaluation
    output ``filename`` (``mm2ct.reports.missing_runs``: absent, older than its ``best.pt``, or of an older
    ``EVAL_FORMAT``). Runs never trained are trained first (``train=False``: ``MissingRunError`` instead); the
    template (no training, no seed) is evaluated once. Returns the pairs that were out of date."""
    from mm2ct.evaluate import evaluate
    from mm2ct.reports import MissingRunError, missing_runs

    todo = missing_runs(ws, list(models), None if seeds is None else list(seeds), filename)
    untrained = [(m, s) for m, s in todo if m != TEMPLATE and not (run_dir(ws, m, s) / "best.pt").is_file()]
    if untrained and not train:
        raise MissingRunError("not trained: " + ", ".join(f"{m} seed {s} ({run_dir(ws, m, s)})"
                                                            for m, s in untrained))
    template_done = False
    for model, seed in todo:
        if model == TEMPLATE:
            if not template_done:
                evaluate(ws, TEMPLATE)
                template_done = True
            continue
        if (model, seed) in untrained:
            from mm2ct.train import train as train_run

            train_run(ws, model, seed=seed)
        evaluate(ws, model, seed)
    if log:
        log(f"{len(todo)} run(s) evaluated now, the others reused: {', '.join(models)}")
    return todo
