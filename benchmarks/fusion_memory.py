"""Fusion module at paper size on CPU: time and peak memory for one slice, and the parameter count vs the paper.

    .venv/bin/python benchmarks/fusion_memory.py                     # 256 x 256, paper widths (C=60; 8/2/5/8)
    .venv/bin/python benchmarks/fusion_memory.py --size 128 --backend torch

Each phase runs in a fresh subprocess (so its peak RSS is its own) under an address-space limit (--mem-limit-gb),
so a phase that would exhaust memory fails cleanly instead of waking the OOM killer:
    forward          no_grad forward (inference, e.g. the source image of one 4-step sampling)
    fwd+bwd          forward + backward, every activation stored
    fwd+bwd ckpt     forward + backward with FusionConfig.checkpoint (block inputs stored, blocks recomputed)
"Δ MB" is peak RSS minus the RSS after building the model and inputs; "KB/px" divides it by batch*H*W: activation
memory is linear in the number of pixels, so Δ ≈ KB/px * batch * H * W is the bound to plan a batch size with.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

PHASES = ("forward", "fwd+bwd", "fwd+bwd ckpt")
PAPER_PARAMS = {"mamba+de": 1.49e6, "mamba": 1.42e6}  # docs/method.md §8.2 (counted: 1,491,396 / 1,419,394)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _phase(args) -> None:
    """Child process: build, run one phase, print a JSON line."""
    limit = int(args.mem_limit_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import dataclasses

    import torch

    from mm2ct.config import load_profile
    from mm2ct.models.fusion import FusionModule

    torch.manual_seed(0)
    cfg = dataclasses.replace(load_profile("paper").fusion, checkpoint=args.phase == "fwd+bwd ckpt")
    model = FusionModule(cfg, backend=args.backend)
    t1, t2 = (torch.rand(args.batch, 1, args.size, args.size) * 2 - 1 for _ in range(2))
    with torch.no_grad():  # warm-up on a tiny map: kernel build/load, allocator
        model(t1[..., :8, :8], t2[..., :8, :8])
    base = _rss_mb()
    t0 = time.perf_counter()
    try:
        if args.phase == "forward":
            with torch.no_grad():
                model(t1, t2)
        else:
            model(t1, t2).square().mean().backward()
        status = "ok"
    except RuntimeError as e:  # allocation failure under the address-space limit
        status = "out of memory" if "alloc" in str(e).lower() or "memory" in str(e).lower() else f"error: {e}"
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    from mm2ct.ops.selective_scan import resolve_backend

    print(json.dumps({"phase": args.phase, "status": status, "time_s": elapsed, "base_mb": base, "peak_mb": peak,
                      "backend": resolve_backend(args.backend or "auto", torch.device("cpu"))}))


def _parameter_rows() -> list[tuple[str, int, float | None]]:
    import dataclasses

    from mm2ct.config import FusionConfig
    from mm2ct.models.fusion import FusionModule, parameter_table

    rows = []
    for name, over in (("mamba+de", {}), ("mamba", {"de": False}), ("conv-only", {"mamba": False, "de": False})):
        n = parameter_table(FusionModule(dataclasses.replace(FusionConfig(), **over)))["total"]
        rows.append((name, n, PAPER_PARAMS.get(name)))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--backend", default=None, help="selective-scan backend (default: auto)")
    ap.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {PHASES}")
    ap.add_argument("--mem-limit-gb", type=float, default=None,
                    help="address-space cap per phase (default: 80%% of MemAvailable)")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per phase")
    ap.add_argument("--_phase", dest="phase", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.mem_limit_gb is None:
        with open("/proc/meminfo") as f:
            avail_kb = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable"))
        args.mem_limit_gb = 0.8 * avail_kb / 2**20
    if args.phase:
        _phase(args)
        return 0

    print(f"Fusion module, paper widths (C=60; 8/2/5/8), batch {args.batch}, {args.size}x{args.size}, "
          f"{os.cpu_count()} CPU cores, address-space cap {args.mem_limit_gb:.1f} GB per phase\n")
    print(f"{'variant':<10} {'params':>10} {'paper':>8} {'ratio':>6}")
    for name, n, paper in _parameter_rows():
        print(f"{name:<10} {n:>10,} " + (f"{paper / 1e6:>7.2f}M {n / paper:>6.3f}" if paper else f"{'-':>8} {'-':>6}"))
    print()

    results = []
    for phase in [p.strip() for p in args.phases.split(",") if p.strip()]:
        if phase not in PHASES:
            raise SystemExit(f"fusion_memory.py: unknown phase {phase!r}; choose from {PHASES}")
        cmd = [sys.executable, __file__, "--_phase", phase, "--size", str(args.size), "--batch", str(args.batch),
               "--mem-limit-gb", str(args.mem_limit_gb)] + (["--backend", args.backend] if args.backend else [])
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            results.append({"phase": phase, "status": f"timeout > {args.timeout} s"})
            continue
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            results.append({"phase": phase, "status": f"failed (rc {proc.returncode}): {tail[:80]}"})
            continue
        results.append(json.loads(lines[-1]))

    pixels = args.batch * args.size * args.size
    fwd = next((r for r in results if r["phase"] == "forward" and r["status"] == "ok"), None)
    full = next((r for r in results if r["phase"] == "fwd+bwd" and r["status"] == "ok"), None)
    print(f"{'phase':<14} {'backend':<7} {'time s':>8} {'x fwd':>6} {'peak MB':>9} {'Δ MB':>8} {'KB/px':>7} "
          f"{'Δ/Δfull':>8}  status")
    for r in results:
        if r["status"] != "ok":
            print(f"{r['phase']:<14} {r.get('backend', '-'):<7} {'-':>8} {'-':>6} {'-':>9} {'-':>8} {'-':>7} "
                  f"{'-':>8}  {r['status']}")
            continue
        delta = r["peak_mb"] - r["base_mb"]
        x_fwd = r["time_s"] / fwd["time_s"] if fwd else float("nan")
        vs_full = delta / (full["peak_mb"] - full["base_mb"]) if full else float("nan")
        print(f"{r['phase']:<14} {r['backend']:<7} {r['time_s']:>8.1f} {x_fwd:>6.2f} {r['peak_mb']:>9.0f} "
              f"{delta:>8.0f} {delta * 1024 / pixels:>7.1f} {vs_full:>8.2f}  ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
