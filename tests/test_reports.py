"""Table 1 / Table 2 / Fig. 4 builders on hand-made evaluation outputs in a temporary workspace."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from mm2ct import reports
from mm2ct.evaluate import EVAL_FORMAT
from mm2ct.checkpoints import run_dir
from mm2ct.reports.runs import eval_dir
from mm2ct.workspace import resolve

TABLE1_MODELS = ["cyclegan_t1", "cyclegan_t2", "syndiff_t1", "syndiff_t2", "mm2ct"]
TABLE1_RUNS = [*TABLE1_MODELS, "template"]   # what Table 1 and Fig. 4 read: the trained models and the template
TABLE2_MODELS = ["syndiff_t1", "syndiff_t2", "mm2ct_node", "mm2ct", "mm2ct_nomamba"]  # the runs Table 2 reads


def _ws(tmp_path, seeds=(42,)):
    return resolve("smoke", root=tmp_path, reports_dir=tmp_path / "reports", train={"seeds": list(seeds)})


def _summary(ws, model, seed, psnr, ssim, mae=80.0, commit="abc1234", val_psnr=20.0, dice=0.75, usage=0.5):
    ev = eval_dir(ws, model, seed)
    ev.mkdir(parents=True, exist_ok=True)
    s = {"model": model, "profile": ws.profile, "seed": seed, "psnr": psnr, "ssim": ssim,
         "psnr_patient_mean": psnr, "psnr_patient_std": 0.5, "ssim_patient_mean": ssim, "ssim_patient_std": 1.5,
         "mae_hu": mae, "mae_hu_std": 4.0, "psnr_hu": psnr + 1.0, "psnr_hu_std": 0.25, "ssim_hu": 0.8125,
         "ssim_hu_std": 0.0125, "dice_bone": dice, "dice_bone_std": 0.05, "input_usage": usage,
         "input_usage_std": 0.125, "checkpoint": str(ev.parent / "best.pt"), "checkpoint_epoch": 3,
         "best_val_psnr": val_psnr,
         "train_seconds": 100.0, "eval_seconds": 10.0, "train_commit": commit, "eval_commit": commit + "e",
         "data": "/data/phantom", "n_slices": 12, "n_patients": 2, "eval_format": EVAL_FORMAT}
    (ev / "summary.json").write_text(json.dumps(s))
    return s


def test_table1_numbers_paper_columns_and_provenance(tmp_path):
    ws = _ws(tmp_path)
    values = {"cyclegan_t1": (21.123, 80.5), "cyclegan_t2": (21.5, 81.25), "syndiff_t1": (22.75, 83.0),
              "syndiff_t2": (23.456, 84.125), "mm2ct": (24.0625, 86.375), "template": (15.0, 60.0)}
    for m, (p, s) in values.items():
        _summary(ws, m, 42, p, s)
    t = reports.table1(ws)
    df = pd.read_csv(ws.reports_dir / "table1.csv", comment="#")
    assert list(df["model"]) == TABLE1_RUNS
    assert list(df["method"]) == ["CycleGAN", "CycleGAN", "SynDiff", "SynDiff", "MM2CT", "template"]
    assert list(df["input"]) == ["T1", "T2", "T1", "T2", "T1+T2", "no MR"]
    for m, (p, s) in values.items():
        row = df[df["model"] == m].iloc[0]
        assert row["psnr"] == p and row["ssim"] == s and row["mae_hu"] == 80.0
        assert row["psnr_patient_std"] == 0.5   # one seed: the across-patient std is the spread shown
    assert np.isnan(df["paper_psnr"][0]) and np.isnan(df["paper_ssim"][1])
    assert list(df["paper_psnr"][2:5]) == [25.36, 25.36, 25.72]
    assert list(df["paper_ssim"][2:5]) == [88.97, 88.97, 89.54]
    assert np.isnan(df["paper_psnr"][5]) and df["paper_status"][5].startswith("not in the paper")
    assert df["paper_status"][2].startswith("derived")

    md = (ws.reports_dir / "table1.md").read_text()
    assert md == t.markdown
    assert "| SynDiff | T2 | 23.46 ± 0.50 | 84.12 ± 1.50 | 80.0 ± 4.0 | 24.46 ± 0.25 | 0.8125 ± 0.0125 |" \
           " 0.750 ± 0.050 | 0.50 ± 0.12 | 25.36 (derived) | 88.97 (derived) |" in md
    assert "| template | no MR | 15.00 ± 0.50 | 60.00 ± 1.50 | 80.0 ± 4.0 | 16.00 ± 0.25 | 0.8125 ± 0.0125 |" \
           " 0.750 ± 0.050 | 0.50 ± 0.12 | – | – |" in md
    assert "| MM2CT | T1+T2 | 24.06 ± 0.50" in md and "25.72 (= Table 2)" in md
    assert "| CycleGAN | T1 | 21.12 ± 0.50" in md
    for text in (md, (ws.reports_dir / "table1.csv").read_text()):
        assert "profile smoke" in text and "seeds: 42" in text and "abc1234" in text and "abc1234e" in text
        assert "train 600.0 s + eval 60.0 s = 660.0 s" in text
        assert "/data/phantom" in text
    side = json.loads((ws.reports_dir / "table1.json").read_text())
    assert side["ordering"]["psnr"]["all_seeds"] is True
    assert side["ordering"]["psnr"]["per_seed"]["42"]["best_single"] == "syndiff_t2"
    assert side["provenance"]["wall_seconds"] == 660.0 and len(side["provenance"]["runs"]) == 6
    assert "PSNR (dB): holds for every seed" in md


def test_table1_seed_mean_std_and_ordering_flag(tmp_path):
    ws = _ws(tmp_path, seeds=(1, 2))
    for seed, mm in ((1, 26.0), (2, 24.0)):
        for m in TABLE1_MODELS[:-1]:
            _summary(ws, m, seed, 20.0 + seed, 80.0 + seed)
        _summary(ws, "mm2ct", seed, mm, 90.0)
    _summary(ws, "template", None, 15.0, 60.0)   # no seed: one evaluation for both
    assert (run_dir(ws, "mm2ct", 2)).name == "mm2ct-seed2"
    t = reports.table1(ws)
    row = t.frame.set_index("model").loc["mm2ct"]
    assert row["psnr"] == pytest.approx(25.0) and row["psnr_seed_std"] == pytest.approx(np.std([26, 24], ddof=1))
    assert row["n_seeds"] == 2
    # PSNR: seed 1 MM2CT 26 > 21; seed 2 MM2CT 24 > 22 -> holds.  Make seed 2 fail on SSIM instead:
    assert t.ordering["psnr"]["all_seeds"] is True
    _summary(ws, "mm2ct", 2, 24.0, 70.0)
    t = reports.table1(ws)
    assert t.ordering["ssim"]["all_seeds"] is False
    assert t.ordering["ssim"]["per_seed"][1]["holds"] is True and t.ordering["ssim"]["per_seed"][2]["holds"] is False
    md = (ws.reports_dir / "table1.md").read_text()
    assert "mean over 2 seeds ± std across seeds" in md
    assert "SSIM (%): does NOT hold for every seed (seed 1: yes, seed 2: no)" in md
    assert f"| MM2CT | T1+T2 | 25.00 ± {np.std([26, 24], ddof=1):.2f}" in md
    csv = (ws.reports_dir / "table1.csv").read_text()
    assert "on ssim: does not hold for every seed (seed 1: yes, seed 2: no)" in csv


def test_table1_also_checks_the_papers_comparison_with_syndiff(tmp_path):
    """CycleGAN best on PSNR: the issue's criterion fails there, the paper's (MM2CT > best SynDiff) holds."""
    ws = _ws(tmp_path)
    psnr = {"cyclegan_t1": 21.0, "cyclegan_t2": 24.5, "syndiff_t1": 22.0, "syndiff_t2": 23.0, "mm2ct": 24.0}
    for m, p in psnr.items():
        _summary(ws, m, 42, p, 80.0, mae=70.0 if m == "mm2ct" else 80.0)
    _summary(ws, "template", 42, 15.0, 60.0, mae=140.0)
    t = reports.table1(ws)
    assert t.ordering["psnr"]["all_seeds"] is False and t.ordering["psnr"]["per_seed"][42]["best_single"] == \
        "cyclegan_t2"
    vs = t.ordering["vs_syndiff"]
    assert vs["psnr"]["all_seeds"] is True and vs["psnr"]["per_seed"][42]["best_single"] == "syndiff_t2"
    assert vs["mae_hu"]["all_seeds"] is True and vs["ssim"]["all_seeds"] is False   # SSIM tied: not better
    md = (ws.reports_dir / "table1.md").read_text()
    assert "**Ordering (MM2CT (T1+T2) > best SynDiff, the paper's best baseline)**" in md
    assert md.index("best single-modality model)**") < md.index("the paper's best baseline)**")
    csv = (ws.reports_dir / "table1.csv").read_text()
    assert "# ordering MM2CT (T1+T2) > best SynDiff, the paper's best baseline on psnr: holds for every seed" in csv
    side = json.loads((ws.reports_dir / "table1.json").read_text())
    assert side["ordering"]["vs_syndiff"]["psnr"]["per_seed"]["42"]["holds"] is True


def test_table2_rows_and_paper(tmp_path):
    """Row 1 is Table 1's SynDiff, chosen per seed on validation PSNR (here T1, although T2 scores better on the
    test slices); the conv-only fusion is an extra row outside the ordering check."""
    ws = _ws(tmp_path)
    _summary(ws, "syndiff_t1", 42, 22.0, 102.0, mae=78.0, val_psnr=19.0)
    _summary(ws, "syndiff_t2", 42, 30.0, 110.0, mae=70.0, val_psnr=18.0)
    for m, p in (("mm2ct_node", 23.0), ("mm2ct", 24.0), ("mm2ct_nomamba", 10.0)):
        _summary(ws, m, 42, p, 80.0 + p, mae=100.0 - p)
    t = reports.table2(ws)
    df = pd.read_csv(ws.reports_dir / "table2.csv", comment="#")
    assert list(df["model"]) == ["syndiff_best", "mm2ct_node", "mm2ct", "mm2ct_nomamba"]
    assert df["chosen"][0] == "syndiff_t1" and df["input"][0] == "T1" and df["psnr"][0] == 22.0
    assert list(df["paper_psnr"][:3]) == [25.36, 25.49, 25.72] and list(df["paper_ssim"][:3]) == [88.97, 89.45, 89.54]
    assert np.isnan(df["paper_psnr"][3]) and df["method"][3] == "conv-only fusion (ours)"
    assert list(df["Mamba module"]) == ["–", "✓", "✓", "–"] and list(df["DE"]) == ["–", "–", "✓", "–"]
    assert t.ordering["claim"].startswith("syndiff_best < mm2ct_node < mm2ct")
    assert all(t.ordering[k]["all_seeds"] for k in ("psnr", "ssim", "mae_hu"))  # the conv row (10 dB) is left out
    md = t.markdown
    assert "| Mamba module + DE | T1+T2 | ✓ | ✓ | 24.00 ± 0.50 | 104.00 ± 1.50 | 76.0 ± 4.0" in md
    assert "| 25.72 | 89.54 |" in md and "| conv-only fusion (ours) | T1+T2 | – | – | 10.00" in md
    assert len(t.provenance["runs"]) == 5  # each run once; the chosen row adds none
    _summary(ws, "syndiff_t2", 42, 30.0, 110.0, mae=70.0, val_psnr=21.0)  # now T2 validates better
    t = reports.table2(ws)
    assert t.frame["chosen"][0] == "syndiff_t2" and not t.ordering["psnr"]["all_seeds"]
    assert (ws.reports_dir / "table2.json").is_file()


def test_missing_runs_named_with_the_command(tmp_path):
    ws = _ws(tmp_path)
    for m in TABLE1_MODELS[:-2]:
        _summary(ws, m, 42, 20.0, 80.0)
    (run_dir(ws, "mm2ct", 42)).mkdir(parents=True)
    (run_dir(ws, "mm2ct", 42) / "best.pt").write_bytes(b"")
    with pytest.raises(reports.MissingRunError) as e:
        reports.table1(ws)
    msg = str(e.value)
    assert str(run_dir(ws, "syndiff_t2", 42)) in msg and str(run_dir(ws, "mm2ct", 42)) in msg
    assert "mm2ct train --profile smoke --model syndiff_t2 --seed 42 && mm2ct evaluate --profile smoke " \
           "--model syndiff_t2 --seed 42" in msg
    assert "trained but not evaluated" in msg and "make it with: mm2ct evaluate --profile smoke --model mm2ct" in msg
    assert "(template, seed 42; needs no training, not evaluated)" in msg
    assert "make it with: mm2ct evaluate --profile smoke --model template --seed 42" in msg
    assert "cyclegan_t1" not in msg
    assert not (ws.reports_dir / "table1.csv").exists()


def test_missing_runs_lists_stale_and_older_format_evaluations(tmp_path):
    ws = _ws(tmp_path)
    for m in TABLE2_MODELS:
        _summary(ws, m, 42, 20.0, 80.0)
    assert reports.missing_runs(ws, TABLE2_MODELS) == []
    old = run_dir(ws, "mm2ct_node", 42) / "eval" / "summary.json"
    s = json.loads(old.read_text())
    del s["eval_format"]   # evaluated by an mm2ct that did not record its format
    old.write_text(json.dumps(s))
    best = run_dir(ws, "mm2ct", 42) / "best.pt"
    best.write_bytes(b"")   # retrained after its evaluation
    summary = run_dir(ws, "mm2ct", 42) / "eval" / "summary.json"
    os.utime(best, (summary.stat().st_mtime + 5,) * 2)
    assert reports.missing_runs(ws, TABLE2_MODELS) == [("mm2ct_node", 42), ("mm2ct", 42)]


def _predictions(ws, model, seed, rng, n_pat=2, n_sl=5, size=32, offset=0.0, fused=None):
    ev = eval_dir(ws, model, seed)
    ev.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    ct, mask, pat, sl = [], [], [], []
    for p in range(n_pat):
        for s in range(n_sl):
            r = 4 + 2 * s + p
            m = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < r ** 2
            ct.append(np.where(m, 0.0, -0.9))
            mask.append(m.astype(np.uint8))
            pat.append(f"P{p:02d}")
            sl.append(s)
    ct = np.stack(ct).astype(np.float32)
    pred = np.clip(ct + offset + 0.05 * rng.standard_normal(ct.shape), -1, 1).astype(np.float32)
    from mm2ct.data.preprocess import unit_to_hu

    extra = {} if fused is None else {"fused": fused(ct * 0.5, -ct).astype(np.float32)}
    np.savez_compressed(ev / "predictions.npz", pred=pred, ct=ct, mask=np.stack(mask), t1=ct * 0.5, t2=-ct,
                        pred_hu=unit_to_hu(pred, ws.cfg.data), ct_hu=unit_to_hu(ct, ws.cfg.data),
                        patient=np.asarray(pat), slice=np.asarray(sl), **extra)


def test_figure4_grid_files_and_provenance(tmp_path):
    ws = _ws(tmp_path)
    rng = np.random.default_rng(0)
    for i, m in enumerate(TABLE1_RUNS):
        _predictions(ws, m, 42, rng, offset=0.02 * i)
        _summary(ws, m, 42, 20.0, 80.0)
    f = reports.figure4(ws, n_slices=3)
    assert f.axes.shape == (6, 3 + len(TABLE1_RUNS)) and f.models == TABLE1_RUNS
    assert len(f.slices) == 3 and len(set(f.slices)) == 3
    # the "most body" half: slices 2..4 of each patient (radius grows with the slice), evenly through them
    assert all(s >= 2 for _, s in f.slices) and f.slices[0][0] == "P00" and f.slices[-1][0] == "P01"
    assert f.slices == reports.figure4(ws, n_slices=3, write=False).slices   # deterministic
    png, pdf, txt = (ws.reports_dir / n for n in ("figure4.png", "figure4.pdf", "figure4.txt"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:5] == b"%PDF-"
    cap = txt.read_text()
    assert "[-400, 1000] HU (W 1400 / L 300)" in cap and "profile smoke" in cap and "abc1234" in cap
    assert "P00 / " in cap and "MM2CT (T1+T2)" in cap and "MM2CT (T1+T2) | template (no MR) | CT" in cap
    assert not list(ws.reports_dir.glob(".*tmp*"))


def test_figure4_missing_predictions(tmp_path):
    ws = _ws(tmp_path)
    _predictions(ws, "mm2ct", 42, np.random.default_rng(0))
    with pytest.raises(reports.MissingRunError, match="cyclegan_t1"):
        reports.figure4(ws)


def test_fused_figure_shows_each_fusion_models_condition_with_its_spread(tmp_path):
    ws = _ws(tmp_path)
    rng = np.random.default_rng(0)
    faint = {"mm2ct_nomamba": 0.01, "mm2ct_node": 0.1, "mm2ct": 1.0}   # Φ = scale * T1
    for m, scale in faint.items():
        _predictions(ws, m, 42, rng, fused=lambda t1, t2, k=scale: k * t1)
        _summary(ws, m, 42, 20.0, 80.0)
    f = reports.fused_figure(ws, n_slices=2)
    assert f.axes.shape == (2, 2 + 3) and f.models == list(reports.FUSION_MODELS)
    assert f.slices == reports.figure4(ws, models=list(reports.FUSION_MODELS), n_slices=2, write=False).slices
    cap = (ws.reports_dir / "fused.txt").read_text()
    t1 = np.load(run_dir(ws, "mm2ct", 42) / "eval" / "predictions.npz")["t1"]
    assert f"mm2ct_nomamba: std {0.01 * t1.std():.4f}, r(T1) 1.000, r(T2) -1.000" in cap
    assert f"mm2ct: std {t1.std():.4f}" in cap and "profile smoke" in cap and "abc1234" in cap
    assert (ws.reports_dir / "fused.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(ws.reports_dir.glob(".*tmp*"))


def test_fused_figure_names_runs_without_a_fused_image(tmp_path):
    ws = _ws(tmp_path)
    _predictions(ws, "mm2ct", 42, np.random.default_rng(0))   # evaluated before Φ was saved
    with pytest.raises(ValueError, match="no fused image in the predictions of mm2ct.*mm2ct evaluate --profile"):
        reports.fused_figure(ws, models=["mm2ct"])


def test_artefacts_name_no_absolute_path(tmp_path):
    """Provenance is portable: summaries, checkpoints and the data folder are named relative to the work directory
    (ws.root), never as the absolute paths of the machine that made them."""
    import re

    ws = _ws(tmp_path)
    rng = np.random.default_rng(0)
    for m in TABLE1_RUNS:
        s = _summary(ws, m, 42, 20.0, 80.0)
        s["data"] = str(tmp_path / "data" / "generated" / "smoke" / "phantom")   # absolute, inside ws.root
        (eval_dir(ws, m, 42) / "summary.json").write_text(json.dumps(s))
        _predictions(ws, m, 42, rng)
    t = reports.table1(ws)
    f = reports.figure4(ws, n_slices=2)
    absolute = re.compile(r"(?<![\w.…/])/[\w.-]+/")
    texts = {p.name: p.read_text() for p in (*t.paths.values(), f.paths["txt"])}
    texts["caption"] = f.caption
    for name, text in texts.items():
        assert str(tmp_path) not in text, name
        assert not absolute.search(text), (name, absolute.search(text))
    assert "runs/smoke/mm2ct/eval/summary.json" in texts["table1.md"]
    assert "data: data/generated/smoke/phantom" in texts["table1.md"]
    side = json.loads(texts["table1.json"])
    assert {r["checkpoint"] for r in side["provenance"]["runs"]} == {f"runs/smoke/{m}/best.pt" for m in TABLE1_RUNS}


def test_table1_checks_that_every_model_beats_the_template(tmp_path):
    """The issue's honest baseline: SynDiff (T1) and MM2CT worse than the template on MAE, MM2CT also on bone Dice."""
    ws = _ws(tmp_path)
    mae = {"cyclegan_t1": 120.0, "cyclegan_t2": 125.0, "syndiff_t1": 150.0, "syndiff_t2": 130.0, "mm2ct": 139.0}
    for m, v in mae.items():
        _summary(ws, m, 42, 20.0, 80.0, mae=v, dice=0.5 if m == "mm2ct" else 0.7, usage=0.0 if m == "mm2ct" else 0.4)
    _summary(ws, "template", 42, 15.0, 60.0, mae=139.0, dice=0.56, usage=0.0)
    t = reports.table1(ws)
    vs = t.ordering["vs_template"]
    assert vs["claim"] == "every model > template (no MR)" and set(vs) == {"claim", "mae_hu", "dice_bone"}
    assert vs["mae_hu"]["per_seed"][42] == {"holds": False, "template": 139.0, "not_better": ["syndiff_t1", "mm2ct"],
                                            "margin": -11.0}   # the worst model: SynDiff (T1), 11 HU above it
    assert vs["mae_hu"]["verdict"] == "fails" and vs["mae_hu"]["n_seeds"] == 1
    assert vs["dice_bone"]["per_seed"][42]["not_better"] == ["mm2ct"] and not vs["dice_bone"]["all_seeds"]
    assert "input_usage" not in t.ordering and "input_usage" not in t.ordering["vs_syndiff"]   # not a claim
    md = t.markdown
    assert "**Ordering (every model > template (no MR))**, per seed:" in md
    assert "- MAE (HU): does NOT hold for every seed (seed 42: no (not better: syndiff_t1, mm2ct))" in md
    assert "- Bone Dice: does NOT hold for every seed (seed 42: no (not better: mm2ct))" in md
    assert "| template | no MR |" in md and "| 0.560 ± 0.050 | 0.00 ± 0.12 | – | – |" in md
    assert "CT > 200 HU" in md and "inside the body mask of the slice cache" in md
    assert "Input usage r" in md and "mean training CT" in md
    csv = (ws.reports_dir / "table1.csv").read_text()
    assert "# ordering every model > template (no MR) on dice_bone: does not hold for every seed (seed 42: no " \
           "(not better: mm2ct))" in csv
    side = json.loads((ws.reports_dir / "table1.json").read_text())
    assert side["ordering"]["vs_template"]["mae_hu"]["per_seed"]["42"]["not_better"] == ["syndiff_t1", "mm2ct"]
    lines = t.ordering_lines()
    assert lines[0] == "MM2CT (T1+T2) > best single-modality model" and "every model > template (no MR)" in lines
    assert any(ln.startswith("  MAE (HU)") and "does NOT hold for every seed (seed 42: no (not better: "
               "syndiff_t1, mm2ct))" in ln for ln in lines)
    assert t.ordering_text() == "\n".join(lines) == "\n".join(reports.ordering_lines(t.ordering))
    better = {m: 100.0 for m in mae}
    for m, v in better.items():
        _summary(ws, m, 42, 20.0, 80.0, mae=v, dice=0.9)
    assert reports.table1(ws).ordering["vs_template"]["mae_hu"]["all_seeds"] is True


def test_the_template_row_is_one_evaluation_for_every_seed(tmp_path):
    ws = _ws(tmp_path, seeds=(1, 2))
    for seed in (1, 2):
        for m in TABLE1_MODELS:
            _summary(ws, m, seed, 20.0 + seed, 80.0, mae=100.0 + seed)
    s = _summary(ws, "template", None, 15.0, 60.0, mae=139.0)
    (eval_dir(ws, "template", None) / "summary.json").write_text(json.dumps({**s, "checkpoint": None,
                                                                             "checkpoint_epoch": None}))
    assert not list(ws.runs_dir.glob("template-seed*"))
    t = reports.table1(ws)
    row = t.frame.set_index("model").loc["template"]
    assert row["n_seeds"] == 1 and row["mae_hu"] == 139.0 and np.isnan(row["mae_hu_seed_std"])
    assert "| template | no MR | 15.00 ± 0.50 |" in t.markdown          # ± across patients, not across seeds
    assert "The template has no seed: one evaluation, ± across test patients." in t.markdown
    assert [r["model"] for r in t.provenance["runs"]].count("template") == 1     # its time is counted once
    assert "- run template seed 1: runs/smoke/template/eval/summary.json (no checkpoint, train commit" in t.markdown
    assert t.ordering["vs_template"]["mae_hu"]["all_seeds"] is True
    assert reports.missing_runs(ws, ["template"]) == []


def test_table2_shows_bone_dice_and_input_usage(tmp_path):
    ws = _ws(tmp_path)
    for m in TABLE2_MODELS:
        _summary(ws, m, 42, 20.0, 80.0, dice=0.625, usage=0.25)
    t = reports.table2(ws)
    assert "| Bone Dice | Input usage r | Paper PSNR (dB) |" in t.markdown
    assert "| 0.625 ± 0.050 | 0.25 ± 0.12 | 25.72 | 89.54 |" in t.markdown
    assert "dice_bone" in t.ordering and "input_usage" not in t.ordering and "template" not in set(t.frame["model"])
    assert "The template (no MR), the floor every model has to beat, is in Table 1." in t.markdown


def test_the_extra_row_follows_the_profiles_models(tmp_path):
    """A profile that does not train the conv-only fusion (the demo, to fit its time budget) gets Table 2 without
    that row, says so, and never asks for the run; the paper's rows stay."""
    ws = resolve("smoke", root=tmp_path, reports_dir=tmp_path / "reports",
                 train={"models": ["cyclegan_t1", "cyclegan_t2", "syndiff_t1", "syndiff_t2", "mm2ct", "mm2ct_node"]})
    assert "mm2ct_nomamba" not in reports.run_models(reports.TABLE2, ws)
    assert "mm2ct_nomamba" in reports.run_models(reports.TABLE2)
    _summary(ws, "syndiff_t1", 42, 22.0, 102.0, val_psnr=19.0)
    _summary(ws, "syndiff_t2", 42, 21.0, 101.0, val_psnr=18.0)
    for m, p in (("mm2ct_node", 23.0), ("mm2ct", 24.0)):
        _summary(ws, m, 42, p, 80.0 + p)
    t = reports.table2(ws)
    assert list(t.frame["model"]) == ["syndiff_best", "mm2ct_node", "mm2ct"]
    assert "Not in this profile (its train.models): conv-only fusion (ours) (mm2ct_nomamba)." in t.markdown


def test_orderings_over_seeds_hold_fail_or_sit_within_the_spread(tmp_path):
    """Over several seeds an ordering holds (every seed, mean margin beyond the margins' spread), fails (no seed,
    beyond the spread) or is within the seeds' spread; each is said in the table with its margin."""
    ws = _ws(tmp_path, seeds=(1, 2, 3))
    psnr = {1: 25.0, 2: 24.0, 3: 26.0}        # MM2CT - best single: +3, +2, +4 -> holds
    ssim = {1: 81.0, 2: 79.0, 3: 85.0}        # SSIM margin: +1, -1, +5 -> within the spread
    mae = {1: 90.0, 2: 92.0, 3: 91.0}         # MAE margin: -10, -12, -11 (lower is better) -> fails
    for s in (1, 2, 3):
        for m in TABLE1_MODELS[:-1]:
            _summary(ws, m, s, 20.0 + (m == "syndiff_t2") * 2, 80.0, mae=80.0)
        _summary(ws, "mm2ct", s, psnr[s], ssim[s], mae=mae[s])
    _summary(ws, "template", 1, 10.0, 50.0, mae=139.0)
    t = reports.table1(ws)
    vs = t.ordering["vs_syndiff"]
    assert vs["psnr"]["verdict"] == "holds" and vs["psnr"]["margin_mean"] == pytest.approx(3.0)
    assert vs["psnr"]["margin_std"] == pytest.approx(1.0)
    assert vs["ssim"]["verdict"] == "within the seeds' spread" and not vs["ssim"]["all_seeds"]
    assert vs["mae_hu"]["verdict"] == "fails" and vs["mae_hu"]["margin_mean"] == pytest.approx(-11.0)
    md = t.markdown
    assert "- PSNR (dB): holds for every seed (seed 1: yes, seed 2: yes, seed 3: yes); over seeds: holds, " \
           "margin +3.00 ± 1.00" in md
    assert "over seeds: within the seeds' spread, margin +1.67 ± 3.06" in md
