"""The GPU path in one short run: kernels, every model's training step, torchrun, the training loop, NIfTI inference.

    python benchmarks/gpu_check.py --wheels /path/to/wheels --out gpu_check.json   # a CUDA machine (< 8 min)
    python benchmarks/gpu_check.py --device cpu --tiny                            # any machine, seconds (the test)
    make gpu-check GPU_CHECK_ARGS="--wheels /path/to/wheels"

Parts, each recorded in one JSON (``--out``) as ok / failed / skipped with the reason and its figures; the exit
status is 1 when any part failed (a skipped part is not a failure, and the summary says why it was skipped):

  environment   card, driver, torch / CUDA / cuDNN / mamba-ssm / causal-conv1d versions, which kernels import
  install       mamba-ssm and causal-conv1d: already importable; or ``--wheels DIR`` (``pip install --no-index
                --no-deps --target DIR/site DIR/*.whl``: every wheel there, so runtime dependencies a machine lacks,
                einops or transformers for mamba-ssm, can ride along); or ``--pip-install`` (``MAMBA_KEEP_CUDA_BUILD=
                TRUE pip install --no-build-isolation mamba-ssm causal-conv1d`` under ``--install-timeout``: recent
                mamba-ssm builds its ``selective_scan_cuda`` extension only with MAMBA_KEEP_CUDA_BUILD=TRUE). When no
                kernel is usable afterwards the run goes on without them and names what that skips.
  cuda_tests    ``pytest -m cuda tests/test_cuda_kernels.py`` in a subprocess (mamba-ssm's scan and causal conv against
                the references, outputs and every gradient, float32 and bfloat16)
  train_steps   every model of Tables 1 and 2 (``mm2ct.translators.MODELS``) at the paper profile (256 px, batch 4;
                ``--profile NAME`` another, e.g. gpu_demo; ``--tiny``: tiny widths, 16 px): ``--warmup`` + ``--steps``
                steps of ``mm2ct.train.train_step`` with ``make_optimisers`` on random images, in float32 and under
                bfloat16 autocast: median step time of the timed steps (CUDA synchronised), samples per second, peak
                memory, whether every loss is finite, and how far bf16 moves the first step's gradients from float32
                (relative L2, reported only). The Mamba models need mamba-ssm's scan on a GPU (the pure-PyTorch scan
                launches one kernel per token: minutes per step at 256 px); without it they run at tiny size only,
                and the JSON says so.
  ddp           ``torchrun`` data parallelism: one step of 2 processes (NCCL on 2 GPUs; gloo on the CPU otherwise,
                plus a 1-process NCCL run on a single GPU) against the single-process step on the combined batch:
                gradients and parameters after the step must agree. Each rank gets every ``world``-th sample and the
                step's random draws (t, noise, z) are made for the combined batch and sliced the same way, so both
                sides see the same numbers (the diffusive discriminator's minibatch-stddev groups line up too).
  train_loop    ``mm2ct.train.train`` itself on the device (tiny profile, phantom, slice cache): one epoch, stop,
                resume for the second (checkpoint, RNG state, EMA, validation on the device), bf16 autocast on CUDA.
  inference     a 256 x 256 x 64 T1 + T2 phantom volume (``--tiny``: 48 x 48 x 8) through ``mm2ct translate`` with a
                checkpoint of an untrained model made on the fly (it measures speed), one sample (twice: cold and
                warm) and ``--samples 4``: seconds per volume.

On a CPU (``--device cpu``) every part that needs CUDA is skipped with the reason; ``--tiny`` keeps the rest to
seconds, which is how tests/test_gpu_check.py runs this script, so it cannot rot unnoticed.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import importlib
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runs from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

PIP_INSTALL_ENV = {"MAMBA_KEEP_CUDA_BUILD": "TRUE"}  # recent mamba-ssm builds selective_scan_cuda only with this
PIP_INSTALL_PACKAGES = ("mamba-ssm", "causal-conv1d")
MAMBA_MODELS = ("mm2ct", "mm2ct_node")  # the models whose fusion module runs selective scans
DDP_MODEL = "mm2ct"                     # every network, the fusion module and the diffusion losses
DDP_WORLD = 2                           # the combined batch is split over this many ranks
# tiny widths and sizes (seconds on a CPU); the diffusive discriminator adapts its depth to 16 px
TINY = {
    "data": {"image_size": 16},
    "fusion": {"embed_dim": 4, "n_extract": 1, "n_swap": 1, "n_m3": 1, "n_recon": 1, "d_state": 2},
    "translator": {"nf": 4, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [8], "nz": 4,
                   "z_emb_dim": 8, "n_mlp": 1, "t_emb_dim": 8, "disc_ngf": 4, "ngf": 4, "n_blocks_nd": 1, "ndf": 4,
                   "n_layers_d": 2},
}


# ------------------------------------------------------------------------------------------------ bookkeeping
class Report:
    """The JSON: environment, one entry per part (status, reason, seconds, figures), skipped and failed lists."""

    def __init__(self, args):
        self.data = {"script": "benchmarks/gpu_check.py", "argv": sys.argv[1:],
                     "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     "device": args.device, "tiny": args.tiny, "environment": {}, "checks": {}, "skipped": [],
                     "failed": []}

    @contextlib.contextmanager
    def part(self, name: str):
        """Record one part: the body fills the dict it gets; an exception marks the part failed (and is kept)."""
        entry = {"status": "ok"}
        self.data["checks"][name] = entry
        t0 = time.perf_counter()
        print(f"[gpu_check] {name} ...", flush=True)
        try:
            yield entry
        except Exception as e:  # noqa: BLE001 - a check reports what broke and the run goes on
            entry.update(status="failed", reason=f"{type(e).__name__}: {e}"[:2000],
                         traceback=traceback.format_exc()[-4000:])
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        if entry["status"] == "skipped":
            self.data["skipped"].append(f"{name}: {entry['reason']}")
        elif entry["status"] == "failed":
            self.data["failed"].append(f"{name}: {entry['reason']}")
        for note in entry.get("skipped_parts", []):
            self.data["skipped"].append(f"{name}: {note}")
        print(f"[gpu_check] {name}: {entry['status']}" + (f" ({entry['reason']})" if entry.get("reason") else "")
              + f" in {entry['seconds']:.1f} s", flush=True)


def _skip(entry: dict, reason: str) -> None:
    entry.update(status="skipped", reason=reason)


def _fail(entry: dict, reason: str) -> None:
    entry.update(status="failed", reason=reason)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _error_line(proc) -> str:
    """The most telling line of a failed child's output: the last one naming an error, else the last one."""
    lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip().strip("=-")]
    errors = [ln for ln in lines if re.search(r"error|exception|failed", ln, re.I) and "ChildFailedError" not in ln]
    return (errors or lines or [""])[-1][:300]


def _subprocess_env(site: Path | None, threads: int | None = None) -> dict[str, str]:
    """This process's environment for a child: the wheel target (if any) and the checkout on PYTHONPATH."""
    env = dict(os.environ)
    paths = ([str(site)] if site else []) + [str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _config(tiny: bool, device_type: str, profile: str = "paper"):
    """The profile of the check: ``paper`` (256 px, batch 4, the paper's widths), another one, or the tiny one."""
    from mm2ct.config import load_profile

    if tiny:
        return load_profile("smoke", **TINY, train={"batch_size": 2})
    return load_profile(profile)


# ------------------------------------------------------------------------------------------------ environment
def _nvidia_smi() -> dict:
    """Card and driver from nvidia-smi (empty when it is missing)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return {}
    try:
        out = subprocess.run([exe, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return {}
    cards = [dict(zip(("name", "driver", "memory"), (f.strip() for f in line.split(",")))) for line in out if line]
    return {"nvidia_smi": cards, "driver": cards[0]["driver"] if cards else None}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device) -> dict:
    import torch

    from mm2ct.ops import cuda_kernels

    info = {"python": sys.version.split()[0], "platform": platform.platform(), "cpu_cores": os.cpu_count(),
            "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "mamba_ssm": _version("mamba-ssm") or _version("mamba_ssm"),
            "causal_conv1d": _version("causal-conv1d") or _version("causal_conv1d"),
            "kernels": {k: {"usable": ok, "why": why} for k, (ok, why) in cuda_kernels.status().items()}}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(card=props.name, capability=f"{props.major}.{props.minor}", memory_gb=round(
            props.total_memory / 2**30, 1), gpus=torch.cuda.device_count(), **_nvidia_smi())
    missing = [m for m in ("numpy", "scipy", "nibabel", "yaml", "tqdm", "pytest") if not _importable(m)]
    info["missing_modules"] = missing
    return info


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except Exception:  # noqa: BLE001
        return False


# ------------------------------------------------------------------------------------------------ install
def _activate(site: Path) -> None:
    """Make packages installed into ``site`` importable in this process and forget earlier import results."""
    from mm2ct.ops import cuda_kernels

    if str(site) not in sys.path:
        sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    for name in [m for m in sys.modules if m.split(".")[0] in ("mamba_ssm", "causal_conv1d")]:
        del sys.modules[name]
    cuda_kernels.cache_clear()


def install(args, device, entry: dict) -> Path | None:
    """Get the kernels (see the module docstring); returns the folder installed into, or None."""
    from mm2ct.ops import cuda_kernels

    status = cuda_kernels.status()
    entry["before"] = {k: why for k, (ok, why) in status.items()}
    if device.type != "cuda" and not args.wheels:
        _skip(entry, "no CUDA device: mamba-ssm and causal-conv1d neither build nor run on a CPU")
        return None
    if all(ok for ok, _ in status.values()):
        entry["how"] = "already installed"
        return None
    site = Path(args.workdir) / "site"
    if args.wheels:
        wheels = sorted(glob.glob(str(Path(args.wheels) / "*.whl")))
        if not wheels:
            _fail(entry, f"--wheels {args.wheels}: no *.whl files there")
            return None
        cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--target", str(site), *wheels]
        env = os.environ
    elif args.pip_install:
        cmd = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--retries", "0", "--timeout", "15",
               "--target", str(site), *PIP_INSTALL_PACKAGES]
        env = {**os.environ, **PIP_INSTALL_ENV}
    else:
        _skip(entry, "mamba-ssm / causal-conv1d not usable here ("
              + "; ".join(sorted({why for ok, why in status.values() if not ok}))
              + ") and neither --wheels DIR nor --pip-install given")
        return None
    entry["command"] = " ".join(f"{k}={v}" for k, v in PIP_INSTALL_ENV.items() if not args.wheels) \
        + (" " if not args.wheels else "") + " ".join(cmd[2:6]) + " ..."
    site.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.install_timeout, env=env)
    except subprocess.TimeoutExpired:
        _fail(entry, f"pip did not finish within --install-timeout {args.install_timeout} s (a source build of "
                     f"mamba-ssm takes longer: give built wheels with --wheels)")
        return None
    entry["pip_tail"] = (proc.stdout + proc.stderr)[-3000:]
    if proc.returncode != 0:
        _fail(entry, f"pip exited with {proc.returncode}: {_error_line(proc)}")
        return None
    _activate(site)
    after = cuda_kernels.status()
    entry["after"] = {k: why for k, (ok, why) in after.items()}
    if device.type == "cuda" and not any(ok for ok, _ in after.values()):
        _fail(entry, "installed, but no kernel imports: " + "; ".join(sorted({w for _, w in after.values()})))
    return site


def kernels_usable(device) -> bool:
    from mm2ct.ops import cuda_kernels

    return device.type == "cuda" and cuda_kernels.status()["selective_scan"][0]


# ------------------------------------------------------------------------------------------------ cuda tests
def cuda_tests(args, device, site, entry: dict) -> None:
    if device.type != "cuda":
        _skip(entry, "no CUDA device (the cuda-marked tests skip themselves on a CPU)")
        return
    if not _importable("pytest"):
        _skip(entry, "pytest is not installed here (add its wheel to --wheels)")
        return
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "-o", "addopts=",
           str(ROOT / "tests" / "test_cuda_kernels.py")]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.tests_timeout, cwd=ROOT,
                              env=_subprocess_env(site))
    except subprocess.TimeoutExpired:
        _fail(entry, f"pytest -m cuda did not finish within {args.tests_timeout} s")
        return
    out = proc.stdout + proc.stderr
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", out)}
    entry.update(counts=counts, returncode=proc.returncode, tail=out[-3000:])
    if proc.returncode not in (0, 5) or counts.get("failed") or counts.get("error") or counts.get("errors"):
        _fail(entry, f"pytest -m cuda: {counts} (exit {proc.returncode})")
    elif not counts.get("passed"):
        _skip(entry, f"every cuda test skipped ({counts}): the kernels are not usable here")


# ------------------------------------------------------------------------------------------------ training steps
def _random_batch(tr, cfg, device, batch: int | None = None, seed: int = 0) -> dict:
    """{source..., "ct"}: (B, 1, S, S) uniform in [-1, 1], drawn on the device from a seeded device generator."""
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    b, s = batch or cfg.train.batch_size, cfg.data.image_size
    return {k: torch.rand(b, 1, s, s, generator=g, device=device) * 2 - 1 for k in (*tr.sources, "ct")}


def measure_steps(model: str, cfg, device, amp: bool, warmup: int, steps: int) -> dict:
    """Warm-up + timed steps of ``train_step``: median step time, samples/s, peak memory, finite losses."""
    import torch

    from mm2ct.runtime import seed_everything
    from mm2ct.train import make_optimisers, train_step
    from mm2ct.translators import build

    seed_everything(0)
    tr = build(model, cfg).to(device)
    tr.train()
    opt_g, opt_d, _, _ = make_optimisers(tr, cfg.train)
    batch = _random_batch(tr, cfg, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    finite, times, logs = True, [], {}
    for i in range(warmup + steps):  # step 0 includes the lazy R1 penalty
        _sync(device)
        t0 = time.perf_counter()
        logs = train_step(tr, batch, i, cfg.train, opt_d, opt_g, amp=amp)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        finite = finite and all(math.isfinite(v) for v in logs.values())
    step_s = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    params = sum(p.numel() for p in tr.parameters())
    del tr, opt_g, opt_d, batch
    return {"step_ms": round(1e3 * step_s, 2), "samples_per_s": round(cfg.train.batch_size / step_s, 3),
            "peak_mem_mb": None if peak is None else round(peak, 1), "loss_finite": finite,
            "d_total": logs.get("d_total"), "g_total": logs.get("g_total"), "parameters": params,
            "timed_steps": len(times)}


def bf16_gradient_error(model: str, cfg, device) -> dict:
    """Relative L2 difference between the first step's gradients under bfloat16 autocast and in float32 (the same
    weights, batch and random draws), for the discriminator step and the generator step: how far autocast moves
    the gradients on this device (reported, not judged: bf16 keeps 8 bits of mantissa)."""
    import torch

    from mm2ct.losses import d_step_losses, g_step_losses
    from mm2ct.runtime import seed_everything
    from mm2ct.translators import build

    seed_everything(0)
    tr = build(model, cfg).to(device)
    batch = _random_batch(tr, cfg, device)
    grads = {}
    for amp in (False, True):
        for name, losses in (("d", lambda: d_step_losses(tr, batch, 0, cfg.train)),
                             ("g", lambda: g_step_losses(tr, batch, cfg.train))):
            tr.zero_grad(set_to_none=True)
            seed_everything(1)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss, _ = losses()
            loss.backward()
            grads[amp, name] = torch.cat([p.grad.detach().float().flatten() for p in tr.parameters()
                                          if p.grad is not None])
    return {name: round(((grads[True, name] - grads[False, name]).norm()
                         / grads[False, name].norm().clamp_min(1e-30)).item(), 4) for name in ("d", "g")}


def train_steps(args, device, entry: dict) -> None:
    from mm2ct.translators import MODELS

    rows, skipped = [], []
    full = _config(args.tiny, device.type, args.profile)
    tiny = _config(True, device.type)
    fast_scan = kernels_usable(device) or device.type != "cuda"
    for model in args.models or list(MODELS):
        cfg = full
        note = None
        if model in MAMBA_MODELS and not fast_scan and not args.tiny:
            cfg, note = tiny, ("mamba-ssm's selective scan is not usable on this GPU: the pure-PyTorch scan launches "
                               "a kernel per token (minutes per step at 256 px); ran at tiny size instead")
            skipped.append(f"{model} at {full.data.image_size} px: {note}")
        for amp in (False, True):
            row = {"model": model, "amp": "bf16" if amp else "fp32", "image_size": cfg.data.image_size,
                   "batch": cfg.train.batch_size, "profile": "tiny" if cfg is tiny else cfg.profile}
            if note:
                row["note"] = note
            try:
                row.update(measure_steps(model, cfg, device, amp, args.warmup, args.steps))
                row["status"] = "ok" if row["loss_finite"] else "failed"
                if amp:
                    row["bf16_grad_rel_l2"] = bf16_gradient_error(model, cfg, device)
            except Exception as e:  # noqa: BLE001 - one model's failure does not hide the others'
                row.update(status="failed", error=f"{type(e).__name__}: {e}"[:1000])
            if device.type == "cuda":
                import torch

                torch.cuda.empty_cache()
            rows.append(row)
            print(f"  {model:14s} {row['amp']:4s} {row['image_size']:4d} px  "
                  + (f"{row['step_ms']:9.1f} ms/step {row['samples_per_s']:8.2f} samples/s"
                     + (f" peak {row['peak_mem_mb']:.0f} MB" if row.get("peak_mem_mb") is not None else "")
                     + ("" if row["loss_finite"] else "  NON-FINITE LOSS")
                     + (f"  bf16 vs fp32 gradients: D {row['bf16_grad_rel_l2']['d']:.3f}, G "
                        f"{row['bf16_grad_rel_l2']['g']:.3f}" if "bf16_grad_rel_l2" in row else "")
                     if "step_ms" in row
                     else f"failed: {row['error']}"), flush=True)
    entry["rows"] = rows
    entry["skipped_parts"] = skipped
    bad = [f"{r['model']} {r['amp']}: {r.get('error', 'non-finite loss')}" for r in rows if r["status"] != "ok"]
    if bad:
        _fail(entry, "; ".join(bad)[:2000])


# ------------------------------------------------------------------------------------------------ data parallel
@contextlib.contextmanager
def sharded_draws(rank: int, world: int, local: int):
    """Random draws with a leading batch dimension of ``local`` are drawn for the combined batch (``local * world``)
    and rank ``rank`` keeps rows rank, rank + world, ... (its samples): every rank consumes the global generators
    exactly as the single process does, so a rank's noise is that of its samples in the single-process step."""
    import torch

    if world == 1:
        yield
        return
    randn, randint = torch.randn, torch.randint

    def grow(size):
        return (size[0] * world, *size[1:])

    def slice_rows(out):
        return out[rank::world].contiguous()

    def sharded_randn(*size, **kwargs):
        shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
        if shape and shape[0] == local:
            return slice_rows(randn(grow(shape), **kwargs))
        return randn(*size, **kwargs)

    def sharded_randint(*args, **kwargs):
        *bounds, size = args
        if len(size) and size[0] == local:
            return slice_rows(randint(*bounds, grow(tuple(size)), **kwargs))
        return randint(*args, **kwargs)

    torch.randn, torch.randint = sharded_randn, sharded_randint
    try:
        yield
    finally:
        torch.randn, torch.randint = randn, randint


def ddp_step(device, rank: int, world: int, combined: int) -> dict:
    """One ``train_step`` of DDP_MODEL (tiny, float32) on this rank's samples of a fixed batch of ``combined``
    samples (rank r: samples r, r + world, ...): the parameters, the gradients of both steps (CPU) and the logs."""
    with _no_tf32():
        return _ddp_step(device, rank, world, combined)


@contextlib.contextmanager
def _no_tf32():
    """float32 products on both sides of the comparison (TF32 rounds to 10 bits), the flags restored after."""
    import torch

    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


def _ddp_step(device, rank: int, world: int, combined: int) -> dict:
    import torch

    from mm2ct.runtime import seed_everything
    from mm2ct.train import _all_reduce_grads, make_optimisers, train_step
    from mm2ct.translators import build

    cfg = _config(True, device.type)
    seed_everything(0)
    tr = build(DDP_MODEL, cfg).to(device)
    opt_g, opt_d, _, _ = make_optimisers(tr, cfg.train)
    g = torch.Generator().manual_seed(1)  # the combined batch, the same in every process
    s = cfg.data.image_size
    images = {k: torch.rand(combined, 1, s, s, generator=g) * 2 - 1 for k in (*tr.sources, "ct")}
    shard = {k: v[rank::world].to(device) for k, v in images.items()}  # this rank's samples
    d_grads = {}
    d_step = opt_d.step

    def step_d(*a, **kw):  # the discriminators' (averaged) gradients, before they move
        d_grads.update({n: p.grad.detach().cpu().clone() for n, p in tr.named_parameters() if p.grad is not None})
        return d_step(*a, **kw)

    opt_d.step = step_d
    seed_everything(1)
    with sharded_draws(rank, world, combined // world):
        logs = train_step(tr, shard, 0, cfg.train, opt_d, opt_g, amp=False, world=world)
    if world == 1 and torch.distributed.is_initialized():  # the collective itself, on this device's tensors
        _all_reduce_grads(tr.generators() + tr.discriminators(), 1)
    return {"params": {n: p.detach().cpu() for n, p in tr.named_parameters()},
            "grads": {n: p.grad.detach().cpu() for n, p in tr.named_parameters() if p.grad is not None},
            "d_grads": d_grads, "logs": logs}


def _ddp_worker(args) -> int:
    """Run under torchrun: init the process group, one sharded step, rank 0 saves the result."""
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if args.ddp_device == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group(args.ddp_backend, device_id=device if device.type == "cuda" else None)
    try:
        out = ddp_step(device, rank, world, args.ddp_local * DDP_WORLD)
        out.update(world=world, backend=dist.get_backend(), device=str(device))
        if rank == 0:
            torch.save(out, Path(args.ddp_out) / "rank0.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


def compare_steps(got: dict, ref: dict, lr: float) -> dict:
    """The data-parallel step against the single-process one: relative L2 difference of all gradients (the
    discriminator step's and the generator step's), and the largest parameter difference in units of the learning
    rate (Adam's first step moves a parameter by about lr * sign(g)). Parameters whose gradient is zero up to
    rounding (a conv bias in front of an InstanceNorm, which cannot change its output) move in a direction set by the
    rounding: the parameter comparison counts only the elements whose two gradients agree to 1 % (the others are
    counted; the gradient comparison covers them)."""
    import torch

    out = {}
    for key in ("d_grads", "grads"):
        names = sorted(ref[key])
        missing = sorted(set(names) ^ set(got[key]))
        g = torch.cat([got[key][n].flatten().double() for n in names if n in got[key]])
        r = torch.cat([ref[key][n].flatten().double() for n in names if n in got[key]])
        out[f"{key}_rel_l2"] = (g - r).norm().item() / max(r.norm().item(), 1e-30)
        out.setdefault("grads_missing_on_one_side", []).extend(missing[:10])
    # Adam's first step is about lr * sign(g): parameters agree where the two gradients agree to 1 %
    dp, left, count = 0.0, 0, 0
    for n, p in ref["params"].items():
        diff = (got["params"][n].double() - p.double()).abs()
        if n in ref["grads"] and n in got["grads"]:
            g, r = got["grads"][n].double(), ref["grads"][n].double()
            sure = r.abs() > 100 * (g - r).abs()
            left += int((~sure).sum())
            diff = diff[sure]
        count += p.numel()
        dp = max(dp, diff.max().item() if diff.numel() else 0.0)
    out.update(param_max_abs=dp, param_max_abs_over_lr=dp / lr, params_left_out=left, params=count)
    return out


def ddp(args, device, site, entry: dict) -> None:
    import torch

    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if gpus >= 2:
        runs = [("nccl", 2, "cuda")]
    else:
        runs = [("gloo", 2, "cpu")] + ([("nccl", 1, "cuda")] if gpus == 1 else [])
        entry["skipped_parts"] = ["2-process NCCL: " + ("one GPU here; ran 2 processes with gloo on the CPU and 1 "
                                                         "process with NCCL on the GPU" if gpus == 1 else
                                                         "no CUDA device; ran 2 processes with gloo on the CPU")]
    lr = _config(True, "cpu").train.lr_g
    results, bad = [], []
    for backend, nproc, dev in runs:
        ref_device = torch.device("cuda", 0) if dev == "cuda" else torch.device("cpu")
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                   str(Path(__file__).resolve()), "--_ddp-worker", "--_ddp-out", tmp, "--_ddp-backend", backend,
                   "--_ddp-device", dev, "--ddp-local", str(args.ddp_local)]
            t0 = time.perf_counter()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.ddp_timeout, cwd=ROOT,
                                      env=_subprocess_env(site, threads=1 if dev == "cpu" else None))
            except subprocess.TimeoutExpired:
                bad.append(f"{backend} x{nproc}: torchrun did not finish within {args.ddp_timeout} s")
                continue
            row = {"backend": backend, "processes": nproc, "device": dev, "seconds": round(time.perf_counter() - t0, 1)}
            if proc.returncode != 0 or not (Path(tmp) / "rank0.pt").is_file():
                row["tail"] = (proc.stdout + proc.stderr)[-3000:]
                results.append(row)
                bad.append(f"{backend} x{nproc}: torchrun exited with {proc.returncode}: {_error_line(proc)}")
                continue
            got = torch.load(Path(tmp) / "rank0.pt", weights_only=False)
        ref = ddp_step(ref_device, 0, 1, args.ddp_local * DDP_WORLD)
        row.update(compare_steps(got, ref, lr), world=got["world"], backend_used=got["backend"])
        grad_err = max(row["d_grads_rel_l2"], row["grads_rel_l2"])
        row["ok"] = (grad_err <= args.ddp_grad_tol and row["param_max_abs_over_lr"] <= args.ddp_param_tol
                     and not row["grads_missing_on_one_side"])
        if not row["ok"]:
            bad.append(f"{backend} x{nproc}: step differs from the single-process step (gradients rel. "
                       f"{grad_err:.1e}, parameters {row['param_max_abs_over_lr']:.2f} lr)")
        results.append(row)
        print(f"  {backend} x{nproc} on {dev}: gradients rel. L2 {grad_err:.1e} (D step, G step), parameters "
              f"max {row['param_max_abs']:.1e} = {row['param_max_abs_over_lr']:.3f} lr "
              f"({row['params_left_out']} of {row['params']} rounding-level elements left out)", flush=True)
    entry.update(runs=results, model=DDP_MODEL, combined_batch=args.ddp_local * DDP_WORLD)
    if bad:
        _fail(entry, "; ".join(bad))


# ------------------------------------------------------------------------------------------------ training loop
def train_loop(args, device, entry: dict) -> None:
    """``mm2ct.train.train`` on the device: tiny profile on the phantom, one epoch, a stop, the resume."""
    from mm2ct.checkpoints import load_checkpoint
    from mm2ct.train import train
    from mm2ct.workspace import resolve

    root = Path(args.workdir) / "train_loop"
    shutil.rmtree(root, ignore_errors=True)
    ws = resolve("smoke", root=root, reports_dir=root / "reports", **TINY,
                 train={"epochs": 2, "max_steps_per_epoch": 1, "batch_size": 2, "device": device.type,
                        "amp": device.type == "cuda", "ema_decay": 0.5})
    logs: list[str] = []
    import torch

    # train() pins threads and switches deterministic algorithms on for the whole process (train.deterministic):
    # put both back, so that the inference timed next runs as `mm2ct translate` would
    state = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        first = train(ws, DDP_MODEL, progress=False, stop_after_epochs=1, log=logs.append)
        second = train(ws, DDP_MODEL, progress=False, log=logs.append)
    finally:
        torch.set_num_threads(state[0])
        torch.use_deterministic_algorithms(state[1], warn_only=state[2])
    tr, _, ckpt = load_checkpoint(second.run_dir / "best.pt", device)
    entry.update(model=DDP_MODEL, amp=ws.cfg.train.amp, epochs=[first.epochs, second.epochs],
                 steps=second.steps, best_psnr=second.best_psnr, log=logs[-5:],
                 resumed=any("resum" in line for line in logs))
    if second.epochs != 2 or not entry["resumed"]:
        _fail(entry, f"the resumed run ended at epoch {second.epochs} (expected 2; log: {logs[-3:]})")
    elif next(tr.parameters()).device.type != device.type:
        _fail(entry, f"load_checkpoint put the model on {next(tr.parameters()).device}, not {device}")


# ------------------------------------------------------------------------------------------------ inference
def inference(args, device, entry: dict) -> None:
    import nibabel as nib
    import torch

    from mm2ct.checkpoints import EMA, atomic_save, make_checkpoint
    from mm2ct.cli import main as cli
    from mm2ct.data.phantom import generate_patient, write_patient
    from mm2ct.data.preprocess import case_normalisers
    from mm2ct.runtime import seed_everything
    from mm2ct.translators import build

    model = "mm2ct"
    if device.type == "cuda" and not kernels_usable(device) and not args.tiny:
        model = "mm2ct_nomamba"
        entry["skipped_parts"] = ["mm2ct whole-volume inference: mamba-ssm's selective scan is not usable on this "
                                  "GPU (the pure-PyTorch scan needs minutes per batch at 256 px); timed "
                                  "mm2ct_nomamba (T1 + T2, conv-only fusion) instead"]
    cfg = _config(args.tiny, device.type)
    grid, slices = ("tiny", 8) if args.tiny else ("gold", 64)
    work = Path(args.workdir) / "inference"
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    case = generate_patient(seed=7, grid=grid, n_slices=slices)
    pat = write_patient(case, work / "patient", labels=False)
    entry["phantom_seconds"] = round(time.perf_counter() - t0, 1)
    seed_everything(0)
    tr = build(model, cfg)
    ckpt = work / f"{model}.pt"
    atomic_save(make_checkpoint(tr, EMA(tr.generators(), cfg.train.ema_decay), None, case_normalisers(cfg.data, case),
                                model, cfg, 0, 0, 0.0, 0, 0.0, "gpu_check", 0), ckpt)
    del tr
    entry.update(model=model, volume=list(case.t2.shape), image_size=cfg.data.image_size, runs=[])
    dev = "cuda" if device.type == "cuda" else "cpu"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for label, samples in (("1 sample (cold)", 1), ("1 sample", 1), ("4 samples", 4)):
        out = work / f"sct_{samples}.nii.gz"
        argv = ["translate", "--t1", str(pat / "t1.nii.gz"), "--t2", str(pat / "t2.nii.gz"), "--checkpoint",
                str(ckpt), "-o", str(out), "--samples", str(samples), "--device", dev, "--no-progress",
                "--batch-size", str(args.batch_size)]
        _sync(device)
        t0 = time.perf_counter()
        rc = cli(argv)
        _sync(device)
        seconds = time.perf_counter() - t0
        run = {"run": label, "samples": samples, "seconds_per_volume": round(seconds, 2),
               "seconds_per_slice": round(seconds / case.t2.shape[2], 4), "exit": rc}
        if rc == 0:
            img = nib.load(str(out))
            run.update(shape=list(img.shape), dtype=str(img.get_data_dtype()))
            if tuple(img.shape) != case.t2.shape or img.get_data_dtype() != "int16":
                rc = 1
        entry["runs"].append(run)
        print(f"  mm2ct translate ({model}, {label}): {seconds:.2f} s per volume", flush=True)
        if rc != 0:
            _fail(entry, f"mm2ct translate --samples {samples} exited with {rc} or wrote {run.get('shape')} "
                         f"{run.get('dtype')} (expected {list(case.t2.shape)} int16)")
            return
    if device.type == "cuda":
        entry["peak_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


# ------------------------------------------------------------------------------------------------ main
PARTS = ("install", "cuda_tests", "train_steps", "ddp", "train_loop", "inference")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (CUDA when available) | cuda | cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny widths and sizes everywhere (seconds on a CPU)")
    ap.add_argument("--out", default=None, help="the JSON (default: <workdir>/gpu_check.json)")
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "gpu_check"),
                    help="scratch folder: installed wheels, phantom, checkpoints (default runs/gpu_check)")
    ap.add_argument("--wheels", default=None, help="folder of wheels to install (mamba-ssm, causal-conv1d, deps)")
    ap.add_argument("--pip-install", action="store_true",
                    help="try MAMBA_KEEP_CUDA_BUILD=TRUE pip install --no-build-isolation mamba-ssm causal-conv1d")
    ap.add_argument("--install-timeout", type=int, default=240, help="seconds for the install (default 240)")
    ap.add_argument("--tests-timeout", type=int, default=240, help="seconds for pytest -m cuda (default 240)")
    ap.add_argument("--ddp-timeout", type=int, default=240, help="seconds per torchrun (default 240)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per model (default 3; --tiny 1)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2; --tiny 1)")
    ap.add_argument("--models", nargs="+", default=None, help="subset of mm2ct.translators.MODELS")
    ap.add_argument("--profile", default="paper",
                    help="profile of the timed training steps (default paper: 256 px, batch 4; gpu_demo: 128 px)")
    ap.add_argument("--batch-size", type=int, default=8, help="slices per forward pass in mm2ct translate")
    ap.add_argument("--skip", nargs="+", default=[], choices=PARTS, help="parts not to run")
    ap.add_argument("--ddp-local", type=int, default=4, help=argparse.SUPPRESS)  # samples per rank (x2 combined)
    ap.add_argument("--ddp-grad-tol", type=float, default=1e-4, help=argparse.SUPPRESS)
    ap.add_argument("--ddp-param-tol", type=float, default=0.05, help=argparse.SUPPRESS)  # in units of lr
    ap.add_argument("--_ddp-worker", dest="ddp_worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_ddp-out", dest="ddp_out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_ddp-backend", dest="ddp_backend", default="gloo", help=argparse.SUPPRESS)
    ap.add_argument("--_ddp-device", dest="ddp_device", default="cpu", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.ddp_worker:
        return _ddp_worker(args)

    import torch

    from mm2ct.atomic import write_text

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: --device cuda but CUDA is not available here", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if args.tiny and device.type == "cpu":
        torch.set_num_threads(1)  # tiny tensors: a second thread costs more than it gives (5x on a busy 2-core box)
    args.steps = args.steps if args.steps is not None else (1 if args.tiny else 3)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 2)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    out = Path(args.out or Path(args.workdir) / "gpu_check.json")
    report = Report(args)
    t_start = time.perf_counter()
    site = None
    runners = {
        "install": lambda e: install(args, device, e),
        "cuda_tests": lambda e: cuda_tests(args, device, site, e),
        "train_steps": lambda e: train_steps(args, device, e),
        "ddp": lambda e: ddp(args, device, site, e),
        "train_loop": lambda e: train_loop(args, device, e),
        "inference": lambda e: inference(args, device, e),
    }
    for name in PARTS:
        with report.part(name) as entry:
            if name in args.skip:
                _skip(entry, "--skip")
                continue
            result = runners[name](entry)
            if name == "install":
                site = result
    report.data["environment"] = environment(device)  # after the install: the kernels as they are now
    report.data["seconds"] = round(time.perf_counter() - t_start, 1)
    report.data["ok"] = not report.data["failed"]
    write_text(out, json.dumps(report.data, indent=1, default=str))
    env = report.data["environment"]
    print(f"\ngpu_check on {env.get('card', 'CPU')} (torch {env['torch']}, CUDA {env['torch_cuda']}, mamba-ssm "
          f"{env['mamba_ssm']}, causal-conv1d {env['causal_conv1d']}) in {report.data['seconds']:.0f} s -> {out}")
    for name, entry in report.data["checks"].items():
        print(f"  {name:12s} {entry['status']:8s}" + (f" {entry['reason'][:150]}" if entry.get("reason") else ""))
    for line in report.data["skipped"]:
        print(f"  skipped: {line}")
    return 0 if report.data["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
