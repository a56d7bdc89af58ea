"""benchmarks/gpu_check.py on a CPU (``--device cpu --tiny``), so the one-run GPU check cannot rot unnoticed, and the
hazards of a first CUDA run that a CPU can reach."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402


def test_cpu_run_writes_the_json_and_says_what_it_skipped(tmp_path):
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny",
                           "--workdir", str(tmp_path / "work"), "--out", str(out)],
                          capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    checks = report["checks"]
    assert report["ok"] and not report["failed"] and report["device"] == "cpu"
    assert {name: c["status"] for name, c in checks.items()} == {
        "install": "skipped", "cuda_tests": "skipped", "train_steps": "ok", "ddp": "ok", "train_loop": "ok",
        "inference": "ok"}
    # every model of Tables 1 and 2, float32 and bf16 autocast, with its figures
    rows = checks["train_steps"]["rows"]
    assert {(r["model"], r["amp"]) for r in rows} == {(m, a) for m in gpu_check_models() for a in ("fp32", "bf16")}
    assert all(r["loss_finite"] and r["step_ms"] > 0 and r["samples_per_s"] > 0 for r in rows)
    assert all(set(r["bf16_grad_rel_l2"]) == {"d", "g"} for r in rows if r["amp"] == "bf16")
    # torchrun: 2 gloo processes equal the single-process step on the combined batch
    (run,) = checks["ddp"]["runs"]
    assert run["world"] == 2 and run["backend_used"] == "gloo" and run["ok"]
    assert max(run["d_grads_rel_l2"], run["grads_rel_l2"]) < 1e-4 and run["param_max_abs_over_lr"] < 0.05
    # the training loop stopped after one epoch and resumed
    assert checks["train_loop"]["resumed"] and checks["train_loop"]["epochs"] == [1, 2]
    runs = checks["inference"]["runs"]
    assert [r["samples"] for r in runs] == [1, 1, 4] and all(r["exit"] == 0 and r["dtype"] == "int16" for r in runs)
    # a CPU run says plainly what it skipped
    skipped = " ".join(report["skipped"])
    assert "no CUDA device" in skipped and "NCCL" in skipped
    assert "skipped: install: no CUDA device" in proc.stdout


def gpu_check_models():
    from mm2ct.translators import MODELS

    return list(MODELS)


def test_sharded_draws_give_each_rank_its_rows_of_the_combined_draw():
    originals = (torch.randn, torch.randint)
    torch.manual_seed(0)
    full_n, full_t = torch.randn(6, 2), torch.randint(0, 4, (6,))
    for rank in range(2):
        torch.manual_seed(0)
        with gpu_check.sharded_draws(rank, 2, 3):
            n, t = torch.randn(3, 2), torch.randint(0, 4, (3,))
            other = torch.randn(5)  # not batch-shaped: drawn as it is
        assert torch.equal(n, full_n[rank::2]) and torch.equal(t, full_t[rank::2]) and other.shape == (5,)
    assert (torch.randn, torch.randint) == originals  # restored


def _step(grad_scale: float) -> dict:
    g = torch.Generator().manual_seed(0)
    grads = {"w": torch.randn(50, generator=g), "b": torch.full((3,), 1e-9)}
    return {"params": {k: -1.6e-4 * torch.sign(v) for k, v in grads.items()},
            "grads": {k: v * grad_scale for k, v in grads.items()}, "d_grads": dict(grads)}


def test_compare_steps_flags_gradients_that_were_not_averaged():
    ref = _step(1.0)
    same = gpu_check.compare_steps(_step(1.0), ref, lr=1.6e-4)
    assert same["grads_rel_l2"] == 0 and same["param_max_abs_over_lr"] == 0
    summed = gpu_check.compare_steps(_step(2.0), ref, lr=1.6e-4)  # all-reduce without the division by world
    assert summed["grads_rel_l2"] == pytest.approx(1.0)


def test_fusion_loss_gradient_under_bf16_autocast_follows_float32():
    """A hazard the GPU-path review found: under bf16 autocast SSIM's variances E[x^2] - E[x]^2 cancelled in
    bfloat16 and the loss's gradient was noise (690 % off float32); fusion_loss now runs in float32."""
    from mm2ct.data.phantom import generate_patient
    from mm2ct.fusion_loss import fusion_loss

    case = generate_patient(3, grid="coarse", n_slices=4)  # 128 x 128 slices
    t1, t2 = (torch.tensor(v[..., 2], dtype=torch.float32)[None, None] for v in (case.t1, case.t2))
    t1, t2 = t1 / t1.max() * 2 - 1, t2 / t2.max() * 2 - 1
    fused = ((t1 + t2) / 2 + 0.05 * torch.randn(t1.shape, generator=torch.Generator().manual_seed(0)))
    fused = fused.clamp(-1, 1).requires_grad_()
    (ref,) = torch.autograd.grad(fusion_loss(fused, t1, t2)[0], fused)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = fusion_loss(fused, t1, t2)[0]
    (got,) = torch.autograd.grad(loss, fused)
    assert ((got.float() - ref).norm() / ref.norm()).item() < 0.1
