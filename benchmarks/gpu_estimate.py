"""How long a profile's reproduction takes on one GPU, estimated on a CPU (no GPU needed): FLOPs and operator counts.

    .venv/bin/python benchmarks/gpu_estimate.py --profile gpu_demo
    .venv/bin/python benchmarks/gpu_estimate.py --profile gpu_demo --minutes 10     # how many steps fit

Every model of the profile is built on PyTorch's ``meta`` device (shapes only, nothing computed), and one training
step (discriminator + generator losses and their backward, ``mm2ct.losses``) and one slice of inference (Φ once and
one 4-step draw) run under PyTorch's FLOP counter and an operator counter. The selective scans are counted from
their size (9 FLOPs per state element forward, 18 more backward, as benchmarks/train_step.py) and stand in as two
operators each (mamba-ssm's kernel: one launch forward, one backward). A step's GPU time is then modelled from

    FLOPs / throughput   (the arithmetic)      and      operators x overhead   (one kernel launch per operator: in
                                                                                eager PyTorch each costs host time)
    conservative: their sum at --tflops 50 and --us-per-op 10 (an H100/H200 at a quarter of its TF32 peak on these
                  mid-sized convolutions, nothing overlapped)
    optimistic:   their maximum at twice the throughput and half the overhead (launches hidden behind the arithmetic)

The run: every (model, seed) trains epochs x min(max_steps_per_epoch, batches per epoch) steps, validates every
``val_every`` epochs and is evaluated on the test slices; the phantom's slice counts come from the profile (train
patients x slices per patient). Data generation, notebooks and figures are left out (a minute or two). These are
estimates until a GPU runs the profile: ``benchmarks/gpu_check.py --profile NAME`` measures the step times.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SCAN_FLOPS_FWD, SCAN_FLOPS_BWD = 9, 18  # per (batch, channel, step, state), as benchmarks/train_step.py
_VIEWS = {"detach", "view", "_unsafe_view", "t", "transpose", "expand", "slice", "select", "unsqueeze", "squeeze",
          "permute", "split", "split_with_sizes", "chunk", "as_strided", "alias", "_reshape_alias", "unbind"}


def count(model: str, cfg) -> dict:
    """FLOPs and operators of one training step (batch ``cfg.train.batch_size``) and of one slice's inference."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    import mm2ct.models.mamba as mamba_mod
    from mm2ct.losses import d_step_losses, g_step_losses
    from mm2ct.translators import build

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += func.overloadpacket.__name__ not in _VIEWS  # views launch nothing
            return func(*args, **(kwargs or {}))

    scans: list[tuple[int, bool]] = []

    def scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False,
             backend="auto"):
        scans.append((u.numel() * A.shape[1], torch.is_grad_enabled()))
        out = u * delta  # two operators and a graph, in place of the kernel
        return out * z if z is not None else out

    size, batch = cfg.data.image_size, cfg.train.batch_size
    original = mamba_mod.selective_scan
    mamba_mod.selective_scan = scan
    try:
        with torch.device("meta"):
            tr = build(model, cfg)
            images = {k: torch.rand(batch, 1, size, size) for k in ("t1", "t2", "ct")}
            sources = {k: torch.rand(1, 1, size, size) for k in tr.sources}
        ops = Ops()
        with FlopCounterMode(display=False) as flops, ops:
            for losses in (lambda: d_step_losses(tr, images, 1, cfg.train), lambda: g_step_losses(tr, images,
                                                                                                  cfg.train)):
                loss, _ = losses()
                loss.backward()
        step_scan = sum(n * (SCAN_FLOPS_FWD + (SCAN_FLOPS_BWD if grad else 0)) for n, grad in scans)
        step = {"flops": flops.get_total_flops() + step_scan, "ops": ops.n}
        scans.clear()
        ops = Ops()
        with torch.no_grad(), FlopCounterMode(display=False) as flops, ops, torch.device("meta"):
            cond = tr.condition(tr.mr(sources))
            if hasattr(tr, "schedule"):  # the T-step draw of SynDiff / MM2CT (values do not matter on meta)
                x = torch.randn(1, 1, size, size)
                for i in range(tr.schedule.num_timesteps):
                    x = tr.G_diff_b(torch.cat([x, cond], 1), torch.full((1,), i, dtype=torch.long),
                                    torch.randn(1, tr.nz))
            else:
                tr.G_nd_ab(cond)
        slice_ = {"flops": flops.get_total_flops() + sum(n * SCAN_FLOPS_FWD for n, _ in scans), "ops": ops.n}
    finally:
        mamba_mod.selective_scan = original
    return {"step": step, "slice": slice_}


def seconds(flops: float, ops: int, tflops: float, us_per_op: float, overlap: bool) -> float:
    arithmetic, launches = flops / (tflops * 1e12), ops * us_per_op * 1e-6
    return max(arithmetic, launches) if overlap else arithmetic + launches


def plan(cfg) -> dict:
    """Steps per run, validation and test slices of the profile (phantom: patients x slices per patient)."""
    per_patient = cfg.data.slices_per_patient or cfg.data.phantom_slices
    n_train, n_val, n_test = (n * per_patient for n in cfg.data.split)
    batches = n_train // cfg.train.batch_size
    steps = cfg.train.epochs * min(batches, cfg.train.max_steps_per_epoch or batches)
    validations = math.ceil(cfg.train.epochs / cfg.train.val_every)
    test = min(n_test, cfg.eval.max_test_slices or n_test) * cfg.eval.n_samples
    return {"steps": steps, "validations": validations, "val_slices": n_val, "test_slices": test,
            "runs": len(cfg.train.models) * len(cfg.train.seeds), "seeds": len(cfg.train.seeds)}


def main(argv=None) -> int:
    from mm2ct.config import load_profile

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="gpu_demo")
    ap.add_argument("--tflops", type=float, default=50.0, help="sustained TFLOP/s, conservative case (default 50)")
    ap.add_argument("--us-per-op", type=float, default=10.0, help="µs per operator, conservative case (default 10)")
    ap.add_argument("--minutes", type=float, default=None, help="also say how many steps per model fit this budget")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    cfg = load_profile(args.profile)
    p = plan(cfg)
    cases = {"conservative": (args.tflops, args.us_per_op, False), "optimistic": (2 * args.tflops,
                                                                                  args.us_per_op / 2, True)}
    print(f"profile {args.profile}: {cfg.data.image_size} px, batch {cfg.train.batch_size}, {p['steps']} steps per "
          f"run, {p['runs']} runs ({len(cfg.train.models)} models x {p['seeds']} seeds), {p['validations']} "
          f"validations of {p['val_slices']} slices and {p['test_slices']} test slices per run")
    print(f"{'model':14s} {'GFLOP/step':>10s} {'ops/step':>9s} {'GFLOP/slice':>11s} {'ops/slice':>9s} "
          f"{'ms/step cons.':>13s} {'ms/step opt.':>12s} {'run s cons.':>11s} {'run s opt.':>10s}")
    rows, totals, per_step = [], {c: 0.0 for c in cases}, {c: 0.0 for c in cases}
    for model in cfg.train.models:
        c = count(model, cfg)
        row = {"model": model, **{f"{k}_{m}": v for k, d in c.items() for m, v in d.items()}}
        for case, (tf, us, overlap) in cases.items():
            step_s = seconds(c["step"]["flops"], c["step"]["ops"], tf, us, overlap)
            batch_s = seconds(c["slice"]["flops"] * cfg.train.batch_size, c["slice"]["ops"], tf, us, overlap)
            infer_s = batch_s / cfg.train.batch_size * (p["validations"] * p["val_slices"] + p["test_slices"])
            row[f"step_s_{case}"], row[f"run_s_{case}"] = step_s, p["steps"] * step_s + infer_s
            totals[case] += row[f"run_s_{case}"] * p["seeds"]
            per_step[case] += step_s * p["seeds"]
        rows.append(row)
        print(f"{model:14s} {c['step']['flops'] / 1e9:10.0f} {c['step']['ops']:9d} {c['slice']['flops'] / 1e9:11.1f} "
              f"{c['slice']['ops']:9d} {1e3 * row['step_s_conservative']:13.0f} {1e3 * row['step_s_optimistic']:12.0f} "
              f"{row['run_s_conservative']:11.0f} {row['run_s_optimistic']:10.0f}", flush=True)
    print(f"whole reproduction (training + validation + test inference): {totals['conservative'] / 60:.0f} min "
          f"conservative, {totals['optimistic'] / 60:.0f} min optimistic (an estimate until a GPU runs it)")
    out = {"profile": args.profile, "plan": p, "assumptions": {k: {"tflops": v[0], "us_per_op": v[1],
                                                                   "overlap": v[2]} for k, v in cases.items()},
           "rows": rows, "total_min": {k: v / 60 for k, v in totals.items()}}
    if args.minutes:
        # training's share of the time stays the same (validation follows the epochs, the test set is small)
        fit = {case: int(args.minutes * 60 * (p["steps"] * per_step[case] / totals[case]) / per_step[case])
               for case in cases}
        out["steps_that_fit"] = fit
        print(f"{args.minutes:g} min fit about {fit['conservative']} (conservative) to {fit['optimistic']} "
              f"(optimistic) steps per model, with validation and test inference in proportion")
    if args.json:
        from mm2ct.atomic import write_text

        write_text(args.json, json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
