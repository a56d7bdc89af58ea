"""One training step of every translator: time, samples per second, FLOPs and how close to this machine's peak.

    .venv/bin/python benchmarks/train_step.py                                   # demo size, eager and compiled
    .venv/bin/python benchmarks/train_step.py --profiles paper --steps 1 --warmup 1 --compile off --threads 2

For each (profile, model, compile): the median wall time of ``--steps`` timed steps of ``mm2ct.train.train_step``
(discriminator step + generator step, the optimisers included) after ``--warmup`` untimed ones, on a batch of the
profile's size (random images in [-1, 1]; the step's cost does not depend on the values); samples per second; the
FLOPs of one step counted by PyTorch's FLOP counter (convolutions, matrix products) plus the selective scans
counted from their size (``SCAN_FLOPS_*`` per state element: the C++ kernel is invisible to the counter); the
achieved GFLOP/s and its ratio to the peak measured in the same run (a 3x3 convolution of the diffusive
generator's widest shape at the same thread count). ``compile`` = ``nn.Module.compile()`` on every network; its
first step (compilation) is reported separately.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

SCAN_FLOPS_FWD = 9   # per (batch, channel, step, state): exp(ΔA), the decay and input terms, the C·h read-out
SCAN_FLOPS_BWD = 18  # the adjoint recurrence and the gradients of Δ, A, B, C, u (about twice the forward)


def conv_peak_gflops(threads: int, channels: int = 64, size: int = 48, batch: int = 4, reps: int = 5) -> float:
    """GFLOP/s of a (batch, C, S, S) 3x3 convolution forward at ``threads`` threads: median of ``reps``."""
    torch.set_num_threads(threads)
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
    x = torch.randn(batch, channels, size, size)
    flops = 2 * batch * channels * channels * 9 * size * size
    with torch.no_grad():
        conv(x)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(10):
                conv(x)
            times.append((time.perf_counter() - t0) / 10)
    return flops / statistics.median(times) / 1e9


def _batch(tr, cfg) -> dict:
    g = torch.Generator().manual_seed(0)
    s, b = cfg.data.image_size, cfg.train.batch_size
    img = lambda: torch.rand(b, 1, s, s, generator=g) * 2 - 1  # noqa: E731
    batch = {k: img() for k in tr.sources}
    batch.update(ct=img(), mask=torch.ones(b, 1, s, s))
    return batch


def step_flops(tr, batch, cfg, step_fn) -> float:
    """FLOPs of one training step: PyTorch's counter plus the selective scans counted from their size."""
    from torch.utils.flop_counter import FlopCounterMode

    import mm2ct.models.mamba as mamba_mod

    scan_elems = []
    original = mamba_mod.selective_scan

    def counting_scan(u, delta, A, *args, **kwargs):
        scan_elems.append((u.shape[0] * u.shape[1] * u.shape[2] * A.shape[1], u.requires_grad or delta.requires_grad))
        return original(u, delta, A, *args, **kwargs)

    mamba_mod.selective_scan = counting_scan
    try:
        with FlopCounterMode(display=False) as counter:
            step_fn()
    finally:
        mamba_mod.selective_scan = original
    scan = sum(n * (SCAN_FLOPS_FWD + (SCAN_FLOPS_BWD if grad else 0)) for n, grad in scan_elems)
    return counter.get_total_flops() + scan


def measure(profile: str, model: str, compiled: bool, steps: int, warmup: int, threads: int) -> dict:
    from mm2ct.config import load_profile
    from mm2ct.train import make_optimisers, train_step
    from mm2ct.translators import build

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_profile(profile)
    tr = build(model, cfg)
    opt_g, opt_d, _, _ = make_optimisers(tr, cfg.train)
    batch = _batch(tr, cfg)
    counter = iter(range(1, 10**9))  # step numbers avoiding the lazy R1 step 0 after the first

    def one() -> None:
        train_step(tr, batch, next(counter), cfg.train, opt_d, opt_g)

    flops = step_flops(tr, batch, cfg, one)
    first = None
    if compiled:
        for name in (*tr.generator_names, *tr.discriminator_names):
            getattr(tr, name).compile()
        t0 = time.perf_counter()
        one()
        first = time.perf_counter() - t0
    for _ in range(warmup):
        one()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        one()
        times.append(time.perf_counter() - t0)
    ms = statistics.median(times) * 1e3
    return {"profile": profile, "model": model, "compile": compiled, "ms": ms,
            "samples_s": cfg.train.batch_size / (ms / 1e3), "gflop": flops / 1e9,
            "gflops": flops / 1e9 / (ms / 1e3), "compile_s": first}


def main(argv=None) -> int:
    from mm2ct.translators import MODELS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", nargs="+", default=["demo"])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (train.jobs = 2 gives each run 1)")
    ap.add_argument("--compile", choices=("off", "on", "both"), default="both")
    args = ap.parse_args(argv)
    peak = conv_peak_gflops(args.threads)
    print(f"threads {args.threads}; measured 3x3-conv peak {peak:.1f} GFLOP/s; load average "
          f"{__import__('os').getloadavg()[0]:.1f}", flush=True)
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    head = f"{'profile':8s} {'model':14s} {'compile':7s} {'ms/step':>9s} {'samples/s':>9s} {'GFLOP':>8s} " \
           f"{'GFLOP/s':>8s} {'of peak':>7s} {'compile s':>9s}"
    print(head)
    rows = []
    for profile in args.profiles:
        for model in args.models:
            for compiled in modes:
                try:
                    r = measure(profile, model, compiled, args.steps, args.warmup, args.threads)
                except Exception as e:  # noqa: BLE001 - a benchmark reports what broke and goes on
                    print(f"{profile:8s} {model:14s} {str(compiled):7s} failed: {type(e).__name__}: {e}", flush=True)
                    continue
                rows.append(r)
                print(f"{profile:8s} {model:14s} {str(compiled):7s} {r['ms']:9.1f} {r['samples_s']:9.2f} "
                      f"{r['gflop']:8.2f} {r['gflops']:8.1f} {r['gflops'] / peak:7.2f} "
                      + ("" if r["compile_s"] is None else f"{r['compile_s']:9.1f}"), flush=True)
    eager = {(r["profile"], r["model"]): r["ms"] for r in rows if not r["compile"]}
    speedups = [(k, eager[k] / r["ms"]) for r in rows if r["compile"] for k in [(r["profile"], r["model"])]
                if k in eager]
    if speedups:
        print("compile speed-up (eager ms / compiled ms): "
              + ", ".join(f"{p}/{m} {s:.2f}x" for (p, m), s in speedups))
    return 0


if __name__ == "__main__":
    sys.exit(main())
