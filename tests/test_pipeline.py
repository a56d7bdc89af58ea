"""mm2ct.pipeline: which profile's runs a notebook shows, and train-if-missing then evaluate (training and
evaluation replaced by recorders: the decisions are under test, not the models)."""
from __future__ import annotations

import pytest

from mm2ct import pipeline
from mm2ct.checkpoints import run_dir
from mm2ct.reports import MissingRunError
from mm2ct.workspace import resolve

MODELS = ["cyclegan_t1", "mm2ct", "template"]


def _ws(root, profile="smoke", **kw):
    return resolve(profile, root=root, reports_dir=kw.pop("reports_dir", None), **kw)


def _trained(ws, models, seeds=None):
    for m in models:
        for s in seeds or ws.cfg.train.seeds:
            run_dir(ws, m, s).mkdir(parents=True, exist_ok=True)
            (run_dir(ws, m, s) / "best.pt").write_bytes(b"")


def test_smoke_shows_the_demo_runs_when_they_are_all_trained(tmp_path, monkeypatch):
    changed = {}
    monkeypatch.setattr(pipeline, "_changed", lambda ws, m, s: changed.get(m))   # the fake best.pt files are empty
    ws = _ws(tmp_path)
    said = []
    assert pipeline.runs_to_show(ws, MODELS, "demo", log=said.append) is ws          # no demo runs: smoke
    assert said[-1].startswith("showing profile smoke's runs (runs/smoke;")
    assert "no trained cyclegan_t1 (seed" in said[-1]
    demo = _ws(tmp_path, "demo")
    _trained(demo, ["cyclegan_t1"])
    assert pipeline.runs_to_show(ws, MODELS, "demo", log=said.append).profile == "smoke"   # mm2ct missing
    assert "mm2ct (seed" in said[-1] and "cyclegan_t1" not in said[-1].split("no trained")[1]
    _trained(demo, ["mm2ct"])
    shown = pipeline.runs_to_show(ws, MODELS, "demo", log=said.append)               # the template needs none
    assert shown.profile == "demo" and shown.root == ws.root and shown.reports_dir.name == "demo"
    assert said[-1].startswith("showing profile demo's trained runs (runs/demo) instead of smoke's")
    assert str(tmp_path) not in " ".join(said)
    changed["mm2ct"] = "train.epochs: 4 in the checkpoint, 5 now"                   # demo.yaml edited since
    assert pipeline.runs_to_show(ws, MODELS, "demo", log=said.append) is ws
    assert said[-1].endswith("profile demo's runs under runs/demo/ were trained with other settings than the profile "
                             "has now: mm2ct (seed 42: train.epochs: 4 in the checkpoint, 5 now)")
    del changed["mm2ct"]
    assert pipeline.runs_to_show(ws, MODELS, None, log=said.append) is ws             # asked not to
    assert pipeline.runs_to_show(ws, MODELS, "demo", reports_dir=tmp_path / "r",
                                 log=None).reports_dir == tmp_path / "r"                # the notebook's folder wins
    own = _ws(tmp_path, data_dir=tmp_path / "mydata")                                  # a data folder of one's own
    assert pipeline.runs_to_show(own, MODELS, "demo", log=said.append) is own
    other = _ws(tmp_path, "demo")
    assert pipeline.runs_to_show(other, MODELS, "paper", log=said.append) is other    # only smoke is replaced


@pytest.fixture()
def recorded(monkeypatch):
    import mm2ct.evaluate
    import mm2ct.train

    calls = []

    def fake_evaluate(ws, model, seed=None, *a, **k):
        calls.append(("evaluate", model, seed))
        ev = (ws.runs_dir / "template" if model == "template" else run_dir(ws, model, seed)) / "eval"
        ev.mkdir(parents=True, exist_ok=True)
        (ev / "summary.json").write_text('{"eval_format": %d}' % mm2ct.evaluate.EVAL_FORMAT)

    def fake_train(ws, model, seed=None, resume=True, *a, **k):
        calls.append(("train", model, seed) if resume else ("train", model, seed, "fresh"))
        _trained(ws, [model], [seed])

    monkeypatch.setattr(mm2ct.evaluate, "evaluate", fake_evaluate)
    monkeypatch.setattr(mm2ct.train, "train", fake_train)
    monkeypatch.setattr(pipeline, "_changed", lambda ws, m, s: None)   # the fake best.pt files are empty
    return calls


def test_ensure_evaluated_trains_what_is_missing_and_evaluates_the_template_once(tmp_path, recorded):
    ws = _ws(tmp_path, train={"seeds": [1, 2]})
    _trained(ws, ["cyclegan_t1"])
    said = []
    todo = pipeline.ensure_evaluated(ws, MODELS, log=said.append)
    assert todo == [("cyclegan_t1", 1), ("cyclegan_t1", 2), ("mm2ct", 1), ("mm2ct", 2), ("template", 1),
                    ("template", 2)]
    assert recorded == [("evaluate", "cyclegan_t1", 1), ("evaluate", "cyclegan_t1", 2), ("train", "mm2ct", 1),
                        ("evaluate", "mm2ct", 1), ("train", "mm2ct", 2), ("evaluate", "mm2ct", 2),
                        ("evaluate", "template", None)]
    assert said == ["6 run(s) evaluated now, the others reused: cyclegan_t1, mm2ct, template"]
    recorded.clear()
    assert pipeline.ensure_evaluated(ws, MODELS, log=None) == [] and recorded == []     # all up to date


def test_ensure_evaluated_without_training_names_the_untrained_runs(tmp_path, recorded):
    ws = _ws(tmp_path)
    with pytest.raises(MissingRunError, match="not trained: mm2ct seed 42"):
        pipeline.ensure_evaluated(ws, ["mm2ct"], train=False, log=None)
    assert recorded == []


def test_ensure_trained_trains_only_what_has_no_checkpoint(tmp_path, recorded):
    ws = _ws(tmp_path)
    _trained(ws, ["cyclegan_t1"])
    said = []
    assert pipeline.ensure_trained(ws, MODELS, log=said.append) == [("mm2ct", 42)]
    assert recorded == [("train", "mm2ct", 42)] and said == ["1 run(s) trained now: mm2ct (seed 42)"]
    assert pipeline.ensure_trained(ws, MODELS, log=said.append) == [] and said[-1].endswith("none needed")


def test_a_smoke_run_trained_with_other_settings_is_trained_again(tmp_path, recorded, monkeypatch):
    ws = _ws(tmp_path)
    _trained(ws, ["cyclegan_t1", "mm2ct"])
    monkeypatch.setattr(pipeline, "_changed", lambda ws, m, s: "train.ema_decay: 0.999 in the checkpoint, 0.1 now"
                        if m == "mm2ct" else None)
    said = []
    pipeline.ensure_evaluated(ws, ["cyclegan_t1", "mm2ct"], log=said.append)
    assert recorded == [("evaluate", "cyclegan_t1", 42), ("train", "mm2ct", 42, "fresh"), ("evaluate", "mm2ct", 42)]
    assert said[0] == "mm2ct seed 42: trained with other settings (train.ema_decay: 0.999 in the checkpoint, 0.1 " \
                      "now); a smoke run, trained again"


def test_changed_names_the_settings_a_checkpoint_was_trained_with(tmp_path):
    import dataclasses

    import torch

    from mm2ct.checkpoints import EMA, atomic_save, make_checkpoint
    from mm2ct.translators import build

    ws = _ws(tmp_path)
    old = dataclasses.replace(ws.cfg, train=dataclasses.replace(ws.cfg.train, ema_decay=0.999))
    torch.manual_seed(0)
    for cfg, seed in ((ws.cfg, 42), (old, 7)):
        tr = build("cyclegan_t1", cfg)
        run_dir(ws, "cyclegan_t1", seed).mkdir(parents=True)
        atomic_save(make_checkpoint(tr, EMA(tr.generators(), cfg.train.ema_decay), None, None, "cyclegan_t1", cfg,
                                    1, 2, 0.0, 1, 1.0, "test", seed), run_dir(ws, "cyclegan_t1", seed) / "best.pt")
    assert pipeline._changed(ws, "cyclegan_t1", 42) is None
    assert pipeline._changed(ws, "cyclegan_t1", 7) == "train.ema_decay: 0.999 in the checkpoint, 0.1 now"
