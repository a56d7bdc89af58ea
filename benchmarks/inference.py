"""Whole-volume inference on this machine: seconds per 256 x 256 x 64 volume, and the ratio to a compute bound.

    .venv/bin/python benchmarks/inference.py                        # paper profile, 64 slices, 1 and 4 samples
    .venv/bin/python benchmarks/inference.py --repeats 5 --json reports/bench_inference.json
    .venv/bin/python benchmarks/inference.py --conv --threads 1 --repeats 7    # the causal conv of the mixers

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

``--conv`` times the depthwise causal conv of the Mamba mixers (``mm2ct.ops.causal_conv``, width 4, bias, SiLU)
instead: the reference ``F.conv1d`` (oneDNN) against the CPU path of shifted multiply-adds, forward (no_grad) and
forward + backward (gradients of x, weight and bias), at the paper's inference shape (1, 120, 65536: d_inner of
C = 60 at 256 px) and the demo's training shape (4, 32, 2304: batch 4, C = 16 at 48 px); each time the median of
``--repeats`` samples of calls, a sample lasting at least 0.1 s. "copy ms" is a copy of x (one read, one write of a
(B, D, L) tensor), the memory traffic of a forward that fuses everything: the lower bound. "faults" are the minor
page faults per call (fresh memory the allocator maps, touched for the first time: much of the reference's time
when it runs alone); "saved MB" what the autograd graph keeps for the backward. Then the fusion module's forward
at ``--size`` px with either conv, as ``mm2ct translate`` runs it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
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


CONV_SHAPES = (("paper inference", (1, 120, 65536)), ("demo training", (4, 32, 2304)))


@contextlib.contextmanager
def reference_conv():
    """``mm2ct.ops.causal_conv.causal_conv1d`` runs the reference (F.conv1d) on CPU tensors too, as before the CPU
    path existed."""
    from mm2ct.ops import causal_conv

    fast = causal_conv.causal_conv1d_cpu
    causal_conv.causal_conv1d_cpu = lambda x, w, b, activation: causal_conv.causal_conv1d_ref(x, w, b, activation)
    try:
        yield
    finally:
        causal_conv.causal_conv1d_cpu = fast


def _per_call(fn, repeats: int, min_s: float = 0.1) -> tuple[float, float]:
    """(median seconds per call over ``repeats`` samples of n calls, each sample >= ``min_s``; minor page faults
    per call)."""
    fn()
    t0 = time.perf_counter()
    fn()
    n = max(1, int(min_s / max(time.perf_counter() - t0, 1e-6)))
    faults0, times = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t0) / n)
    return statistics.median(times), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / (n * repeats)


def _saved_mb(fn) -> float:
    """MB of the distinct storages the autograd graph of ``fn()`` saves for the backward."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values()) / 2**20


def _conv_row(what: str, shape: tuple[int, int, int], repeats: int) -> list[dict]:
    """The forward and fwd+bwd rows of one shape: reference vs CPU path, and the copy bound."""
    from mm2ct.ops.causal_conv import causal_conv1d_cpu, causal_conv1d_ref

    g = torch.Generator().manual_seed(0)
    x, dy = torch.randn(shape, generator=g), torch.randn(shape, generator=g)  # (B, D, L)
    w, b = torch.randn(shape[1], 4, generator=g) / 2, torch.randn(shape[1], generator=g)  # (D, K), (D,)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    copy = torch.empty_like(x)
    copy_s, _ = _per_call(lambda: copy.copy_(x), repeats)
    rows_ = []
    for mode in ("forward", "fwd+bwd"):
        row = {"what": what, "shape": shape, "mode": mode, "copy_ms": copy_s * 1e3}
        for name, conv in (("ref", causal_conv1d_ref), ("fast", causal_conv1d_cpu)):
            def forward(conv=conv):
                with torch.no_grad():
                    return conv(x, w, b, "silu")

            def fwd_bwd(conv=conv):
                return torch.autograd.grad(conv(*leaves, "silu"), leaves, dy)

            if mode == "fwd+bwd":
                row[f"{name}_saved_mb"] = _saved_mb(lambda conv=conv: conv(*leaves, "silu"))
            t, faults = _per_call(forward if mode == "forward" else fwd_bwd, repeats)
            row[f"{name}_ms"], row[f"{name}_faults"] = t * 1e3, faults
        rows_.append(row)
        print(f"  measured conv {what} {mode}: F.conv1d {row['ref_ms']:.2f} ms, fast {row['fast_ms']:.2f} ms",
              file=sys.stderr, flush=True)
    return rows_


def measure_conv(args) -> list[dict]:
    """The conv alone at ``CONV_SHAPES``, reference vs CPU path, forward and forward + backward (module docstring)."""
    return [row for what, shape in CONV_SHAPES for row in _conv_row(what, shape, args.repeats)]


def measure_fusion_conv(args) -> dict:
    """The fusion module's forward at ``--size`` px (``--batch`` slices) with the reference conv and with the CPU
    path, alternated, ``--repeats`` times each: median seconds per slice."""
    from mm2ct.config import load_profile
    from mm2ct.models.fusion import FusionModule

    cfg = load_profile("paper", data={"image_size": args.size})
    torch.manual_seed(0)
    fusion = FusionModule(cfg.fusion).eval()
    t1, t2 = (torch.rand(args.batch, 1, args.size, args.size) * 2 - 1 for _ in range(2))
    times = {"ref": [], "fast": []}
    with torch.no_grad():
        fusion(t1[..., :8, :8], t2[..., :8, :8])  # warm-up: kernel build / load
        for _ in range(args.repeats):
            for name, seconds in times.items():
                with reference_conv() if name == "ref" else contextlib.nullcontext():
                    t0 = time.perf_counter()
                    fusion(t1, t2)
                    seconds.append((time.perf_counter() - t0) / args.batch)
    print(f"  measured fusion forward: F.conv1d {', '.join(f'{t:.2f}' for t in times['ref'])} s, fast "
          f"{', '.join(f'{t:.2f}' for t in times['fast'])} s per slice", file=sys.stderr, flush=True)
    return {"size": args.size, "ref_s": statistics.median(times["ref"]), "fast_s": statistics.median(times["fast"]),
            "ref_times_s": times["ref"], "fast_times_s": times["fast"]}


def print_conv_table(rows_: list[dict], fusion: dict | None) -> None:
    print(f"\n{'causal conv, K = 4, SiLU':34s} {'F.conv1d':>9s} {'fast':>7s} {'speed-up':>8s} {'copy':>6s} "
          f"{'fast/copy':>9s} {'faults ref/fast':>15s} {'saved MB ref/fast':>17s}")
    for r in rows_:
        saved = f"{r['ref_saved_mb']:.1f} / {r['fast_saved_mb']:.1f}" if "ref_saved_mb" in r else ""
        print(f"{r['what'] + ' ' + 'x'.join(map(str, r['shape'])) + ' ' + r['mode']:34s} {r['ref_ms']:7.2f}ms "
              f"{r['fast_ms']:5.2f}ms {r['ref_ms'] / r['fast_ms']:7.2f}x {r['copy_ms']:4.2f}ms "
              f"{r['fast_ms'] / r['copy_ms']:8.2f}x {r['ref_faults']:7.0f} / {r['fast_faults']:<5.0f} {saved:>17s}")
    if fusion:
        print(f"{'fusion forward, ' + str(fusion['size']) + ' px, s/slice':34s} {fusion['ref_s']:8.2f}s "
              f"{fusion['fast_s']:6.2f}s {fusion['ref_s'] / fusion['fast_s']:7.2f}x")
    print("speed-up: F.conv1d time / fast time; copy: one read + one write of x (the fused lower bound); faults: "
          "minor page faults per call")


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
    ap.add_argument("--conv", action="store_true", help="time the mixers' causal conv instead (module docstring)")
    ap.add_argument("--no-fusion", action="store_true", help="with --conv: leave out the fusion module's forward")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()
    if args.conv:
        print(f"{torch.get_num_threads()} threads; load average {load[0]:.1f}", flush=True)
        conv_rows = measure_conv(args)
        fusion = None if args.no_fusion else measure_fusion_conv(args)
        print_conv_table(conv_rows, fusion)
        print(f"load average {load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (other processes slow "
              f"every number)")
        if args.json:
            write_text(args.json, json.dumps({"args": vars(args) | {"json": str(args.json)}, "conv": conv_rows,
                                              "fusion": fusion}, indent=1))
            print(f"wrote {args.json}")
        return 0
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
