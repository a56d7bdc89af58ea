"""The steps notebooks 07-10 share before they build a report: which profile's runs to show, and train-if-missing
then evaluate.

    ws = runs_to_show(ws, models, prefer="demo")   # under smoke: demo's trained runs when they all exist
    ensure_evaluated(ws, models)                   # trains what was never trained, evaluates what is stale
    ensure_trained(ws, ["mm2ct"])                  # a checkpoint to translate with (notebook 10)

This module may import the training loop; ``mm2ct.reports`` and ``mm2ct.evaluate`` never import it (and never
import this module), so that building a report can never start a training run.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from mm2ct.checkpoints import EVALUATION_SETTINGS, config_differences, describe_differences, read_checkpoint, run_dir
from mm2ct.config import load_profile
from mm2ct.provenance import portable_path
from mm2ct.template import TEMPLATE
from mm2ct.translators import MODELS
from mm2ct.workspace import Workspace, resolve


def _untrained(ws: Workspace, models: Sequence[str], seeds: Sequence[int] | None = None) -> list[tuple[str, int]]:
    """(model, seed) pairs without a ``best.pt`` (the template needs none)."""
    seeds = [int(s) for s in (ws.cfg.train.seeds if seeds is None else seeds)]
    return [(m, s) for m in models if m != TEMPLATE for s in seeds
            if not (run_dir(ws, m, s) / "best.pt").is_file()]


def _changed(ws: Workspace, model: str, seed: int) -> str | None:
    """How the settings ``best.pt`` of a run was trained with differ from the profile's now (None: they do not)."""
    ckpt = read_checkpoint(run_dir(ws, model, seed) / "best.pt")
    diffs = config_differences(ckpt.get("config"), ws.cfg, ckpt.get("model"), ignore=EVALUATION_SETTINGS)
    return describe_differences(diffs) if diffs else None


def runs_to_show(ws: Workspace, models: Sequence[str], prefer: str | None = "demo",
                 reports_dir: str | os.PathLike | None = None, log: Callable[..., None] | None = print) -> Workspace:
    """The workspace whose runs a notebook shows, said in one line through ``log``.

    Under ``smoke`` (every notebook's default: a few training steps, numbers without meaning) on the embedded
    phantom, the runs of profile ``prefer`` when every one of ``models`` is trained there for each of its seeds
    (``runs/<prefer>/<model>/best.pt``, trained with the settings the profile has now; notebook 06 or
    ``make reproduce`` make them): a user who opens a notebook
    after a reproduction sees trained models. Otherwise, and always with ``prefer=None``, another profile or a data
    folder of one's own, ``ws`` itself. The preferred profile's artefacts go to its own reports folder, or to
    ``reports_dir`` (the notebook's parameter) when one is given."""
    say = log or (lambda *a, **k: None)
    if ws.profile != "smoke" or not prefer or prefer == ws.profile or not ws.uses_phantom:
        say(f"showing profile {ws.profile}'s runs ({portable_path(ws.runs_dir, ws.root)})")
        return ws
    other = Workspace(cfg=load_profile(prefer), root=ws.root)
    models = [m for m in models if m == TEMPLATE or m in other.cfg.train.models or m not in MODELS]
    where = portable_path(other.runs_dir, ws.root)
    smoke = f"showing profile smoke's runs ({portable_path(ws.runs_dir, ws.root)}; a few training steps, numbers " \
            f"without meaning): "
    missing = _untrained(other, models)
    if missing:
        say(smoke + f"profile {prefer} has no trained " + ", ".join(f"{m} (seed {s})" for m, s in missing)
            + f" under {where}/ (notebook 06 with profile = \"{prefer}\", or `make reproduce`, trains them)")
        return ws
    stale = []
    for m in models:
        for s in other.cfg.train.seeds if m != TEMPLATE else ():
            try:
                why = _changed(other, m, int(s))
            except (OSError, ValueError) as e:   # RunError: a checkpoint that cannot be read
                why = str(e)
            if why:
                stale.append(f"{m} (seed {s}: {why})")
    if stale:
        say(smoke + f"profile {prefer}'s runs under {where}/ were trained with other settings than the profile "
            f"has now: " + "; ".join(stale))
        return ws
    say(f"showing profile {prefer}'s trained runs ({where}) instead of smoke's (prefer_trained = \"{prefer}\"; "
        "set it to None for the smoke runs)")
    return resolve(prefer, None, reports_dir, root=ws.root)


def _train_if_needed(ws: Workspace, model: str, seed: int, log: Callable[..., None] | None) -> bool:
    """Train one run when it has no ``best.pt``, or (under ``smoke`` only: a few steps, numbers without meaning)
    when it was trained with other settings than the profile has now, then from scratch. True when it trained."""
    best = run_dir(ws, model, seed) / "best.pt"
    changed = _changed(ws, model, seed) if best.is_file() and ws.profile == "smoke" else None
    if best.is_file() and not changed:
        return False
    from mm2ct.train import train

    if changed and log:
        log(f"{model} seed {seed}: trained with other settings ({changed}); a smoke run, trained again")
    train(ws, model, seed=seed, resume=not changed)
    return True


def ensure_trained(ws: Workspace, models: Sequence[str], seeds: Sequence[int] | None = None,
                   log: Callable[..., None] | None = print) -> list[tuple[str, int]]:
    """Train every (model, seed) of ``models`` x ``seeds`` (default: the profile's) that has no ``best.pt`` yet
    (the template needs none), and under ``smoke`` those trained with other settings; returns the pairs trained."""
    seeds = [int(s) for s in (ws.cfg.train.seeds if seeds is None else seeds)]
    todo = [(m, s) for m in models if m != TEMPLATE for s in seeds if _train_if_needed(ws, m, s, log)]
    if log:
        log(f"{len(todo)} run(s) trained now: " + (", ".join(f"{m} (seed {s})" for m, s in todo) or "none needed"))
    return todo


def ensure_evaluated(ws: Workspace, models: Sequence[str], seeds: Sequence[int] | None = None, train: bool = True,
                     filename: str = "summary.json", log: Callable[..., None] | None = print) -> list[tuple[str, int]]:
    """Make every (model, seed) of ``models`` x ``seeds`` (default: the profile's) have an up-to-date evaluation
    output ``filename`` (``mm2ct.reports.missing_runs``: absent, older than its ``best.pt``, or of an older
    ``EVAL_FORMAT``). Runs never trained are trained first (``train=False``: ``MissingRunError`` instead); the
    template (no training, no seed) is evaluated once. Under ``smoke`` (runs of a few steps, numbers without
    meaning) a run trained with other settings than the profile has now is trained again from scratch; under any
    other profile ``evaluate`` refuses it, naming the file, the settings and the command that retrains it. Returns
    the pairs that were out of date."""
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
        if train:
            _train_if_needed(ws, model, seed, log)
        evaluate(ws, model, seed)
    if log:
        log(f"{len(todo)} run(s) evaluated now, the others reused: {', '.join(models)}")
    return todo
