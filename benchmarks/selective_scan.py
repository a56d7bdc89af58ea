"""Selective scan (docs/method.md §6.2): each backend's time, speed-up over the reference, ratio to a lower bound,
and peak extra memory, at Mamba-layer shapes (batch B=4, state N=16; channels D x length L).

    .venv/bin/python benchmarks/selective_scan.py                  # D in {64, 128} x L in {1024, 4096, 16384}
    .venv/bin/python benchmarks/selective_scan.py --quick --json reports/bench_scan.json

Inputs are what a Mamba block passes at init (mm2ct.ops.mamba_like_inputs): D, z, delta_bias and delta_softplus on.
- ms: median wall time over the repeats; "fwd" runs under no_grad, "fwdbwd" is forward + backward to every input.
- speedup_vs_ref: reference time / ms. The sequential reference (``selective_scan_ref``) is timed at the smallest L
  of each D; for longer L its time is estimated by linear scaling in L (its cost is O(L)), marked "~" in the table.
- bound_ratio: ms / lower bound, where the bound is the bytes that must be read and written once (inputs u, delta,
  z, B, C and output; plus dout, du, ddelta, dz, dB, dC for the backward) divided by the memory bandwidth measured
  in this run with a large tensor copy.
- x exp (table only): time / the exp floor, the time torch.exp takes (measured in this run on a 4 MB tensor) for
  the exp(Δ A) values the scan needs: B·D·L·N for the forward, twice that for forward + backward (the backward
  recomputes them). On CPU this, not memory bandwidth, is the floor.
- peak_mb: peak extra memory of one call (tracemalloc does not see torch's allocations). CPU: peak RSS (VmHWM, reset
  through /proc/self/clear_refs) minus the RSS before the call, after malloc_trim has returned freed heap memory to
  the OS, so the call's own allocations show up.
  CUDA: torch.cuda.max_memory_allocated minus the memory allocated before the call.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from mm2ct.atomic import write_text
from mm2ct.ops import available_backends, mamba_like_inputs, selective_scan, selective_scan_ref

BATCH, N = 4, 16


# ------------------------------------------------------------------------------------------------ measurements
def memory_bandwidth_gbs(device: torch.device, mb: int = 256) -> float:
    """Copy bandwidth (bytes read + written per second, GB/s) of a large tensor copy, median of 5."""
    src = torch.ones(mb * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(6):
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * src.numel() * 4 / statistics.median(times[1:]) / 1e9


def exp_ns(device: torch.device) -> float:
    """Wall time of one float32 exp in torch.exp (all threads), in ns: median of 10 over a 4 MB tensor."""
    x = -10 * torch.rand(2**20, device=device)
    y = torch.empty_like(x)
    times = []
    for _ in range(11):
        _sync(device)
        t0 = time.perf_counter()
        torch.exp(x, out=y)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 1e9 * statistics.median(times[1:]) / x.numel()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class PeakMemory:
    """Peak extra memory of a block of code, in MB (see the module docstring for the method); NaN if unsupported."""

    def __init__(self, device: torch.device):
        self.device, self.mb = device, math.nan

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            try:
                ctypes.CDLL(None).malloc_trim(0)  # hand freed heap back, so the call's allocations show in the RSS
            except (OSError, AttributeError):
                pass
            try:
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
                self.base = _rss_kb("VmRSS")
            except OSError:
                self.base = None
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.mb = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        elif self.base is not None:
            self.mb = (_rss_kb("VmHWM") - self.base) / 1024


def inputs(D: int, L: int, device: torch.device) -> dict[str, torch.Tensor]:
    return mamba_like_inputs(batch=BATCH, dim=D, L=L, N=N, dtype=torch.float32, device=device)


def bound_bytes(D: int, L: int, backward: bool) -> int:
    """Bytes that must move once (float32): see the module docstring."""
    per_channel, per_state = BATCH * D * L, BATCH * N * L
    fwd = 4 * (4 * per_channel + 2 * per_state)  # read u, delta, z, B, C; write out
    bwd = 4 * (7 * per_channel + 4 * per_state)  # read u, delta, z, dout, B, C; write du, ddelta, dz, dB, dC
    return fwd + (bwd if backward else 0)


def time_call(fn, x, backward: bool, device: torch.device, repeats: int, budget_s: float):
    """(median ms, peak extra MB) of fn(**x) (and its backward), with one warm-up; stops early past budget_s."""
    def once():
        if backward:
            args = {k: v.detach().requires_grad_() for k, v in x.items()}
            out = fn(**args, delta_softplus=True)
            out.backward(torch.ones_like(out))
        else:
            with torch.no_grad():
                fn(**x, delta_softplus=True)

    once()
    with PeakMemory(device) as mem:
        once()
    times = []
    start = time.perf_counter()
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        once()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return 1e3 * statistics.median(times), mem.mb


# ------------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="D=128, L in {1024, 4096} only")
    ap.add_argument("--json", type=Path, help="write the rows to this JSON file")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--budget", type=float, default=20.0, help="seconds of repeats per measurement at most")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    shapes = [(128, 1024), (128, 4096)] if args.quick else [(D, L) for D in (64, 128) for L in (1024, 4096, 16384)]
    status = available_backends()
    backends = [b for b in (("cuda", "torch") if device.type == "cuda" else ("cpu", "torch")) if status[b][0]]
    bw, t_exp = memory_bandwidth_gbs(device), exp_ns(device)
    load_start = os.getloadavg()[0]
    print(f"device {device} ({torch.get_num_threads()} threads), memory bandwidth {bw:.1f} GB/s (copy), "
          f"torch.exp {t_exp:.2f} ns per value, load average {load_start:.1f} (other processes slow every number)")
    for name, (ok, why) in status.items():
        print(f"  {name:<6} {'yes' if ok else 'no '}  {why}")

    rows, ref_ms = [], {}
    for D, L in shapes:
        x = inputs(D, L, device)
        for backward in (False, True):
            pass_ = "fwdbwd" if backward else "fwd"
            bound_ms = 1e3 * bound_bytes(D, L, backward) / (bw * 1e9)
            L_ref = min(l for d, l in shapes if d == D)
            if (D, pass_) not in ref_ms:  # the reference at this D's smallest L, once
                ms, mb = time_call(selective_scan_ref, inputs(D, L_ref, device), backward, device, 1, 0)
                ref_ms[D, pass_] = ms / L_ref
                rows.append(dict(backend="ref", B=BATCH, D=D, L=L_ref, N=N, **{"pass": pass_}, ms=ms,
                                 speedup_vs_ref=1.0, bound_ratio=ms / (1e3 * bound_bytes(D, L_ref, backward) / (bw * 1e9)),
                                 exp_ratio=ms / (1e-6 * t_exp * BATCH * D * L_ref * N * (2 if backward else 1)),
                                 peak_mb=mb, ref_estimated=False))
            ref = ref_ms[D, pass_] * L
            for b in backends:
                fn = lambda backend=b, **kw: selective_scan(**kw, backend=backend)  # noqa: E731
                ms, mb = time_call(fn, x, backward, device, args.repeats, args.budget)
                exp_ms = 1e-6 * t_exp * BATCH * D * L * N * (2 if backward else 1)
                rows.append(dict(backend=b, B=BATCH, D=D, L=L, N=N, **{"pass": pass_}, ms=ms, speedup_vs_ref=ref / ms,
                                 bound_ratio=ms / bound_ms, exp_ratio=ms / exp_ms, peak_mb=mb,
                                 ref_estimated=L != L_ref))
                print(f"  measured {b:<5} D={D:<4} L={L:<6} {pass_:<6} {ms:9.1f} ms", file=sys.stderr)

    print(f"\n{'backend':<8}{'B':>3}{'D':>5}{'L':>7}{'N':>4}  {'pass':<7}{'ms':>10}{'x ref':>10}{'x bound':>9}"
          f"{'x exp':>7}{'peak MB':>9}")
    for r in rows:
        speed = ("~" if r["ref_estimated"] else "") + f"{r['speedup_vs_ref']:.0f}"
        print(f"{r['backend']:<8}{r['B']:>3}{r['D']:>5}{r['L']:>7}{r['N']:>4}  {r['pass']:<7}{r['ms']:>10.1f}"
              f"{speed:>10}{r['bound_ratio']:>9.1f}{r['exp_ratio']:>7.1f}{r['peak_mb']:>9.0f}")
    print("x ref: speed-up over the sequential reference ('~': reference time estimated by linear scaling in L from "
          "the smallest L); x bound: time / (bytes moved once / copy bandwidth); x exp: time / torch.exp time for the "
          "exp(ΔA) values (fwd+bwd: twice); peak MB: "
          + ("CUDA max_memory_allocated increase" if device.type == "cuda" else "peak RSS increase (VmHWM)")
          + f"; load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    if args.json:
        keys = ("backend", "B", "D", "L", "N", "pass", "ms", "speedup_vs_ref", "bound_ratio", "peak_mb")
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_text(args.json, json.dumps([{k: r[k] for k in keys} for r in rows], indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
