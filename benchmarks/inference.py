"""Whole-volume inference on this machine: seconds per 256 x 256 x 64 volume, and the ratio to a compute bound.

    .venv/bin/python benchmarks/inference.py                        # paper profile, 64 slices, 1 and 4 samples
    .venv/bin/python benchmarks/inference.py --repeats 5 --json reports/bench_inference.json

What it times (paper widths, ``--size`` px, ``--batch`` slices per forward pass, no_grad, the scan backend auto picks):
  fusion        Φ(T1, T2), MM2CT's fusion module (the condition of its generators)
  draw          one 4-step sampling of the diffusive generator G_diff_b (NCSN++); SynDiff's and MM2CT's are the
                same network (input [x_t, source], 2 channels)
Each is the median of ``--repeats`` timed calls after a warm-up. A volume is not translated end to end (about 10
and 25 minutes here): its time is extrapolated from these parts, as ``mm2ct translate`` spends it:
  syndiff, K samples = slices x K x draw
  mm2ct,   K samples = slices x (fusion + K x draw)   (``Translator.sample`` computes Φ once per slice)
reading, normalising and writing the NIfTI files are left out (well under a second per volume).

The bound: the FLOPs of one slice (PyTorch's FLOP counter: convolutions and matrix products) divided by this
machine's compute peak, measured in the same run as the faster of a large float32 matrix product and a large 3 x 3
convolution; "x bound" = time / bound. The selective scans (46 per fusion pass) are invisible to the counter and
run at the speed of exp, not of a matrix product: "scan s" is their time measured alone in the same run (every scan
of one fusion pass at its shape), and "x bound+scan" compares with FLOPs / peak + that time.
Other processes slow every number: the load average is printed at the start and the end.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _median_time(fn, repeats: int) -> tuple[float, list[float]]:
    fn()  # warm-up (kernel build / load, allocator)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def compute_peak(repeats: int = 5) -> dict:
    """GFLOP/s of a 2048^2 float32 matrix product and of a (1, 128, 128, 128) 3 x 3 convolution, 128 -> 128
    channels (the widest NCSN++ shapes run near it): the faster is the peak."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    x, w = torch.randn(1, 128, 128, 128), torch.randn(128, 128, 3, 3)
    with torch.no_grad():
        mm, _ = _median_time(lambda: a @ b, repeats)
        conv, _ = _median_time(lambda: torch.nn.functional.conv2d(x, w, padding=1), repeats)
    out = {"matmul_gflops": 2 * 2048 ** 3 / mm / 1e9, "conv_gflops": 2 * 128 * 128 * 9 * 128 * 128 / conv / 1e9}
    out["peak_gflops"] = max(out.values())
    return out


def count(fn) -> tuple[float, list[tuple[int, ...]]]:
    """(FLOPs counted by PyTorch, the (batch, dim, L, N) shape of every selective scan) of one call of ``fn``."""
    from torch.utils.flop_counter import FlopCounterMode

    import mm2ct.models.mamba as mamba_mod

    shapes, original = [], mamba_mod.selective_scan

    def counting_scan(u, delta, A, *args, **kwargs):
        shapes.append((*u.shape, A.shape[1]))
        return original(u, delta, A, *args, **kwargs)

    mamba_mod.selective_scan = counting_scan
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            fn()
    finally:
        mamba_mod.selective_scan = original
    return counter.get_total_flops(), shapes


def scan_seconds(shapes: list[tuple[int, ...]], repeats: int) -> float:
    """The time of every listed selective scan, measured alone with Mamba-like inputs (one timing per shape)."""
    from mm2ct.ops import mamba_like_inputs, selective_scan

    total = 0.0
    for shape in sorted(set(shapes)):
        b, d, length, n = shape
        x = mamba_like_inputs(batch=b, dim=d, L=length, N=n)
        with torch.no_grad():
            t, _ = _median_time(lambda: selective_scan(**x, delta_softplus=True), repeats)
        total += t * shapes.count(shape)
    return total


def measure(args, fusion_cls=None) -> dict:
    """Times, FLOPs and scans of the fusion module and of one draw, per slice. ``fusion_cls`` replaces the fusion
    module class (to compare another implementation in the same run)."""
    from mm2ct.config import load_profile
    from mm2ct.diffusion import DiffusionSchedule
    from mm2ct.models.fusion import FusionModule
    from mm2ct.models.ncsnpp import NCSNpp

    cfg = load_profile("paper", data={"image_size": args.size})
    torch.manual_seed(0)
    fusion = (fusion_cls or FusionModule)(cfg.fusion).eval()
    g_diff = NCSNpp.from_config(cfg.translator, in_ch=2, out_ch=1, image_size=args.size).eval()
    schedule = DiffusionSchedule(cfg.translator.num_timesteps, cfg.translator.beta_min, cfg.translator.beta_max)
    t1, t2 = (torch.rand(args.batch, 1, args.size, args.size) * 2 - 1 for _ in range(2))
    nz = cfg.translator.nz

    def run_fusion():
        with torch.no_grad():
            return fusion(t1, t2)

    cond = run_fusion()

    def run_draw():
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            return schedule.sample(g_diff, cond, lambda b, gen: torch.randn(b, nz, generator=gen), g)

    out = {}
    for name, fn in (("fusion", run_fusion), ("draw", run_draw)):
        flops, shapes = count(fn)
        t, times = _median_time(fn, args.repeats)
        out[name] = {"s_per_slice": t / args.batch, "times_s": times, "gflop_per_slice": flops / 1e9 / args.batch,
                     "scans": len(shapes), "scan_s_per_slice": scan_seconds(shapes, 3) / args.batch if shapes else 0.0}
        print(f"  measured {name:6s} {t / args.batch:7.2f} s per slice ({', '.join(f'{x:.2f}' for x in times)} s "
              f"for {args.batch} slice(s))", file=sys.stderr, flush=True)
    return out


def rows(parts: dict, peak: float, slices: int) -> list[dict]:
    """The table: the parts, then SynDiff and MM2CT per volume with 1 and 4 samples."""
    f, d = parts["fusion"], parts["draw"]

    def row(name, s, gflop, scan_s):
        bound = gflop / peak
        return {"what": name, "s_per_slice": s, "gflop_per_slice": gflop, "gflops": gflop / s, "x_bound": s / bound,
                "scan_s_per_slice": scan_s, "x_bound_scan": s / (bound + scan_s), "s_per_volume": s * slices}

    out = [row("fusion", f["s_per_slice"], f["gflop_per_slice"], f["scan_s_per_slice"]),
           row("draw", d["s_per_slice"], d["gflop_per_slice"], 0.0)]
    for k in (1, 4):
        out.append(row(f"syndiff, {k} sample{'s' if k > 1 else ''}", k * d["s_per_slice"], k * d["gflop_per_slice"],
                       0.0))
        out.append(row(f"mm2ct, {k} sample{'s' if k > 1 else ''}", f["s_per_slice"] + k * d["s_per_slice"],
                       f["gflop_per_slice"] + k * d["gflop_per_slice"], f["scan_s_per_slice"]))
    return out


def print_table(table: list[dict], slices: int) -> None:
    print(f"\n{'':22s} {'s/slice':>8s} {'GFLOP':>7s} {'GFLOP/s':>8s} {'x bound':>8s} {'scan s':>7s} "
          f"{'x bound+scan':>12s} {'s/volume':>9s} {'min/volume':>10s}")
    for r in table:
        print(f"{r['what']:22s} {r['s_per_slice']:8.2f} {r['gflop_per_slice']:7.1f} {r['gflops']:8.1f} "
              f"{r['x_bound']:8.2f} {r['scan_s_per_slice']:7.2f} {r['x_bound_scan']:12.2f} {r['s_per_volume']:9.0f} "
              f"{r['s_per_volume'] / 60:10.1f}")
    print(f"per volume: {slices} slices, extrapolated from the timed parts (module docstring); x bound: time / (FLOPs "
          f"/ peak); x bound+scan: time / (FLOPs / peak + the scans' time measured alone)")


def main(argv=None) -> int:
    from mm2ct.atomic import write_text
    from mm2ct.ops.selective_scan import resolve_backend

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="slice size in px (default 256, the paper's)")
    ap.add_argument("--slices", type=int, default=64, help="slices per volume (default 64)")
    ap.add_argument("--batch", type=int, default=1, help="slices per timed forward pass (default 1)")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per part (median; default 3)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()
    peak = compute_peak()
    print(f"{torch.get_num_threads()} threads, scan backend {resolve_backend('auto', torch.device('cpu'))}; compute "
          f"peak {peak['peak_gflops']:.0f} GFLOP/s (matmul {peak['matmul_gflops']:.0f}, conv "
          f"{peak['conv_gflops']:.0f}); load average {load[0]:.1f}", flush=True)
    parts = measure(args)
    table = rows(parts, peak["peak_gflops"], args.slices)
    print_table(table, args.slices)
    print(f"load average {load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (other processes slow "
          f"every number)")
    if args.json:
        write_text(args.json, json.dumps({"args": vars(args) | {"json": str(args.json)}, "peak": peak,
                                          "parts": parts, "rows": table}, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
