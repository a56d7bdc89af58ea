"""Translator networks at paper size on CPU: parameters, time and peak memory for one 256 x 256 slice.

    .venv/bin/python benchmarks/translator_memory.py                  # every component, both phases
    .venv/bin/python benchmarks/translator_memory.py --only G_diff --size 128 --threads 1

Components (docs/method.md §2.3-2.5, §8.2, paper widths of ``mm2ct.config.Config``):
    G_nd        ResNet-6 non-diffusive generator, 1 -> 1 channel
    G_diff      NCSN++ diffusive generator, [x_{t+1}, source] 2 -> 1 channel
    D_diff      time-conditioned diffusive discriminator, [x_t, x_{t+1}]
    D_nd        PatchGAN
    fusion      the Mamba fusion module Phi(T1, T2) (forward only here; benchmarks/fusion_memory.py has training)
    syndiff     SynDiff translate: 4-step sampling of G_diff (inference)
    mm2ct       MM2CT translate: Phi, then 4-step sampling (inference)
Phases: "forward" (no_grad, as in inference) and "fwd+bwd" (one training forward + backward of the component alone).

Each (component, phase) runs in a fresh subprocess, so its peak RSS (ru_maxrss) is its own. "build MB" is the RSS
after imports, model and input; "peak MB" the peak RSS; "Δ MB" their difference (activations and workspace).
A row passes when the peak stays under --bound-gb (default 4 GiB, the stated bound for one slice on CPU).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

COMPONENTS = ("G_nd", "G_diff", "D_diff", "D_nd", "fusion", "syndiff", "mm2ct")
INFERENCE_ONLY = ("fusion", "syndiff", "mm2ct")
PHASES = ("forward", "fwd+bwd")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _child(args) -> None:
    """Build one component at paper widths, run one phase on one slice, print a JSON line."""
    import torch

    from mm2ct.config import Config
    from mm2ct.diffusion import DiffusionSchedule
    from mm2ct.models.discriminators import DiffusiveDiscriminator, PatchDiscriminator
    from mm2ct.models.ncsnpp import NCSNpp
    from mm2ct.models.resnet import ResnetGenerator

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tc, s, name = Config().translator, args.size, args.component
    x = torch.rand(1, 1, s, s) * 2 - 1  # (1, 1, S, S)
    t = torch.zeros(1, dtype=torch.long)
    nets: dict[str, torch.nn.Module] = {}
    if name == "G_nd":
        nets["G_nd"] = ResnetGenerator(1, 1, tc.ngf, tc.n_blocks_nd)
    if name in ("G_diff", "syndiff", "mm2ct"):
        nets["G_diff"] = NCSNpp.from_config(tc, in_ch=2, out_ch=1, image_size=s)
    if name == "D_diff":
        nets["D_diff"] = DiffusiveDiscriminator(1, s, tc.disc_ngf, tc.t_emb_dim)
    if name == "D_nd":
        nets["D_nd"] = PatchDiscriminator(1, tc.ndf, tc.n_layers_d)
    if name in ("fusion", "mm2ct"):
        from mm2ct.models.fusion import FusionModule

        nets["fusion"] = FusionModule(Config().fusion)
    schedule = DiffusionSchedule(tc.num_timesteps, tc.beta_min, tc.beta_max)

    def translate(source: torch.Tensor) -> torch.Tensor:  # what Translator.translate runs (§2.8)
        g = torch.Generator().manual_seed(42)
        z_fn = lambda n, gen: torch.randn(n, tc.nz, generator=gen)  # noqa: E731
        return schedule.sample(nets["G_diff"], source, z_fn, g)

    run = {
        "G_nd": lambda: nets["G_nd"](x),
        "G_diff": lambda: nets["G_diff"](torch.cat([x, x], 1), t, torch.randn(1, tc.nz)),
        "D_diff": lambda: nets["D_diff"](x, t, x),
        "D_nd": lambda: nets["D_nd"](x),
        "fusion": lambda: nets["fusion"](x, x.flip(-1)),
        "syndiff": lambda: translate(x),
        "mm2ct": lambda: translate(nets["fusion"](x, x.flip(-1))),
    }[name]
    params = sum(p.numel() for net in nets.values() for p in net.parameters())
    base = _rss_mb()
    t0 = time.perf_counter()
    if args.phase == "forward":
        with torch.no_grad():
            run()
    else:
        run().float().square().mean().backward()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    print(json.dumps({"params": params, "build": base, "peak": peak, "seconds": seconds}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--only", nargs="*", choices=COMPONENTS, default=list(COMPONENTS))
    ap.add_argument("--phases", nargs="*", choices=PHASES, default=list(PHASES))
    ap.add_argument("--bound-gb", type=float, default=4.0)
    ap.add_argument("--component", help=argparse.SUPPRESS)
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.component:
        _child(args)
        return 0

    print(f"one {args.size}x{args.size} slice, batch 1, CPU, {args.threads} thread(s); bound {args.bound_gb} GiB peak RSS")
    header = f"{'component':<9} {'phase':<8} {'params':>12} {'seconds':>8} {'build MB':>9} {'peak MB':>8} {'Δ MB':>7}  ok"
    print(header + "\n" + "-" * len(header))
    failed = 0
    for comp in args.only:
        for phase in args.phases:
            if phase != "forward" and comp in INFERENCE_ONLY:
                continue
            cmd = [sys.executable, __file__, "--component", comp, "--phase", phase, "--size", str(args.size),
                   "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  env={**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")})
            if proc.returncode:
                print(f"{comp:<9} {phase:<8} failed: {proc.stderr.strip().splitlines()[-1:]}")
                failed += 1
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            ok = r["peak"] <= args.bound_gb * 1024
            failed += not ok
            print(f"{comp:<9} {phase:<8} {r['params']:>12,} {r['seconds']:>8.2f} {r['build']:>9.0f} "
                  f"{r['peak']:>8.0f} {r['peak'] - r['build']:>7.0f}  {'yes' if ok else 'NO'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
