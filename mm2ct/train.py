"""Training loop for every translator (docs/method.md §2.6-2.7, §8.4): SynDiff's losses and schedule.

One step = discriminator step (diffusive + non-diffusive losses, lazy R1) then generator step
(``mm2ct.losses``), Adam (beta1, beta2) for both, cosine decay per epoch to ``lr_min`` over ``lr_schedule_epochs``
(default: ``epochs``), EMA of the generators (fusion module included). Validation PSNR (paper-style, EMA weights)
picks ``best.pt``.

A run lives in ``runs/<profile>/<model>/`` (``<model>-seed<S>`` for extra seeds): ``last.pt`` (written
atomically at the end of every epoch: model, EMA, optimisers, schedulers, RNG states, step, config), ``best.pt``,
``log.csv`` (one row per step), ``val.csv`` (one row per validation) and ``config.yaml`` (written when the run
starts, after every check: the config its checkpoints carry). A killed run resumes from ``last.pt`` and ends with
exactly the weights of an uninterrupted run with the same seed (CPU; tested); a ``last.pt`` of another model or
config is refused (``--fresh`` starts over). While it trains, the folder holds ``train.lock`` (pid, host): a second
training of the same run is refused (``checkpoints.run_lock``).

Several GPUs: ``torchrun --nproc_per_node K -m mm2ct train ...``: every rank trains on its shard of each epoch's
batches and gradients are averaged across ranks before each optimiser step; rank 0 validates and writes.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from mm2ct.atomic import sweep_stale, write_text
from mm2ct.checkpoints import (EMA, RunError, atomic_save, config_differences, describe_differences, fresh_hint,
                               load_weights, make_checkpoint, read_checkpoint, run_dir, run_lock, set_rng_state)
from mm2ct.config import Config, ConfigError, save_config
from mm2ct.provenance import git_commit, portable_path
from mm2ct.runtime import cpu_threads, pick_device, reproducible, seed_everything
from mm2ct.workspace import Workspace


# ----------------------------------------------------------------------------------------------------- helpers
def _all_reduce_grads(modules: list[torch.nn.Module], world: int) -> None:
    """Average gradients across ranks (data-parallel training without wrapping every network in DDP)."""
    grads = [p.grad for m in modules for p in m.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


# ----------------------------------------------------------------------------------------------------- training
@dataclass
class RunResult:
    model: str
    seed: int
    run_dir: Path
    best_psnr: float
    best_epoch: int
    epochs: int
    steps: int
    seconds: float


def _batches(dataset, batch_size: int, seed: int, epoch: int, rank: int, world: int, max_steps: int | None):
    """This epoch's batches for this rank: a permutation drawn from (seed, epoch), so a resumed run sees the same
    order; incomplete last batches are dropped (BatchNorm-free nets, but keeps shapes fixed)."""
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    order = torch.randperm(len(dataset), generator=g).tolist()
    n = len(order) // (batch_size * world)
    if max_steps is not None:
        n = min(n, max_steps)
    if n == 0:
        raise ValueError(f"the training set has {len(dataset)} slices: fewer than one batch of {batch_size}"
                         f"{f' x {world} ranks' if world > 1 else ''}; lower train.batch_size")
    for i in range(n):
        idx = order[(i * world + rank) * batch_size:(i * world + rank + 1) * batch_size]
        items = [dataset[j] for j in idx]
        arrays = (np.ndarray, torch.Tensor)
        yield {k: torch.stack([torch.as_tensor(it[k]) for it in items]) if isinstance(items[0][k], arrays)
               else [it[k] for it in items] for k in items[0]}


def make_optimisers(tr, tc):
    """Adam (beta1, beta2) for the generators (fusion module included) and for the discriminators, each with a
    cosine decay per epoch to ``lr_min`` over ``lr_schedule_epochs`` (default ``epochs``): (opt_g, opt_d, sched_g,
    sched_d)."""
    betas = (tc.beta1, tc.beta2)
    opt_g = torch.optim.Adam([p for m in tr.generators() for p in m.parameters()], lr=tc.lr_g, betas=betas)
    opt_d = torch.optim.Adam([p for m in tr.discriminators() for p in m.parameters()], lr=tc.lr_d, betas=betas)
    period = tc.lr_schedule_epochs or tc.epochs
    sched_g = torch.optim.lr_scheduler.CosineAnnealingLR(opt_g, T_max=period, eta_min=tc.lr_min)
    sched_d = torch.optim.lr_scheduler.CosineAnnealingLR(opt_d, T_max=period, eta_min=tc.lr_min)
    return opt_g, opt_d, sched_g, sched_d


def train_step(tr, batch: dict, step: int, tc, opt_d, opt_g, amp: bool = False, world: int = 1) -> dict[str, float]:
    """One training step (method.md §2.6): the discriminator step (diffusive + non-diffusive losses, R1 every
    ``lazy_reg`` steps), then the generator step; gradients averaged across ``world`` ranks before each optimiser
    step; bf16 autocast with ``amp``. ``batch`` on the model's device. Returns the logged losses as floats."""
    from mm2ct.losses import d_step_losses, g_step_losses

    device_type = next(tr.parameters()).device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
        opt_d.zero_grad(set_to_none=True)
        loss_d, logs_d = d_step_losses(tr, batch, step, tc)
    loss_d.backward()
    if world > 1:
        _all_reduce_grads(tr.discriminators(), world)
    opt_d.step()
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
        opt_g.zero_grad(set_to_none=True)
        loss_g, logs_g = g_step_losses(tr, batch, tc)
    loss_g.backward()
    if world > 1:
        _all_reduce_grads(tr.generators(), world)
    opt_g.step()
    logs = {**logs_d, **logs_g}
    device = loss_g.device
    values = torch.stack([torch.as_tensor(v).detach().to(device, torch.float32).reshape(()) for v in logs.values()])
    return dict(zip(logs, values.tolist()))  # one device-to-host copy per step, not one per logged value


def validate(tr, dataset, cfg: Config, device: torch.device, max_slices: int | None = None) -> float:
    """Mean paper-style PSNR (method.md §8.5) of ``tr.translate`` over the validation slices (seed cfg.eval.seed)."""
    from mm2ct.metrics import paper_metrics
    from mm2ct.predict import predict_batches

    scores = [paper_metrics(pred, np.asarray(it["ct"])[0])["psnr"]
              for batch in predict_batches(tr, dataset, cfg.eval.seed, device, max(1, cfg.train.batch_size),
                                           max_slices, progress=False)
              for pred, it in zip(batch.draws[0], batch.items)]
    finite = [s for s in scores if np.isfinite(s)]
    return float(np.mean(finite)) if finite else float("nan")


def train(ws: Workspace, model: str, seed: int | None = None, resume: bool = True, progress: bool = True,
          stop_after_epochs: int | None = None, log=print) -> RunResult:
    """Train ``model`` (a name of ``mm2ct.translators.MODELS``) under the workspace's profile.

    ``resume``: continue from ``last.pt`` when it exists (a finished run returns at once).
    ``stop_after_epochs``: end this call after that many epochs of this call (simulates a kill; tests use it).
    """
    from tqdm.auto import tqdm

    from mm2ct.data.slices import SliceDataset, ensure_cache
    from mm2ct.ops import set_default_backend
    from mm2ct.translators import MODELS, build

    cfg = ws.cfg
    tc = cfg.train
    seed = tc.seeds[0] if seed is None else seed
    if model not in MODELS:
        raise ValueError(f"unknown translator {model!r}; known: {', '.join(MODELS)}")
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    rank = dist.get_rank() if world > 1 else 0
    device = pick_device(tc.device, "train.device") \
        if world == 1 or tc.device != "auto" or not torch.cuda.is_available() \
        else torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    set_default_backend(cfg.scan.backend)
    if device.type == "cpu":
        reproducible(tc.threads, tc.deterministic)
    elif tc.deterministic:
        reproducible(0, True)
    out = run_dir(ws, model, seed)

    # what can fail for a bad request (data, batch size) fails before the run folder is touched
    cache = ensure_cache(ws) if rank == 0 else ws.cache_dir
    if world > 1:
        dist.barrier()
    train_set = SliceDataset(cache, "train", paired=not cfg.data.unpaired, seed=seed)
    normalisers = train_set.meta["normalisers"]  # carried by every checkpoint: inference needs no cache
    val_set = SliceDataset(cache, "val", paired=True, seed=seed)
    n_steps = len(train_set) // (tc.batch_size * world)  # per epoch
    if tc.max_steps_per_epoch is not None:
        n_steps = min(n_steps, tc.max_steps_per_epoch)
    if n_steps == 0:
        raise ValueError(f"{cache}: the training set has {len(train_set)} slices: fewer than one batch of "
                         f"{tc.batch_size}{f' x {world} ranks' if world > 1 else ''}; lower train.batch_size")

    seed_everything(seed)
    tr = build(model, cfg).to(device)                 # the same initial weights on every rank
    if world > 1:
        seed_everything(seed * 1000 + rank)           # but each rank draws its own t, noise and z
    opt_g, opt_d, sched_g, sched_d = make_optimisers(tr, tc)
    ema = EMA(tr.generators(), tc.ema_decay)
    epoch, step, best_psnr, best_epoch, seconds = 0, 0, -math.inf, -1, 0.0

    last = out / "last.pt"
    # one training per run folder: rank 0 holds its lock (two would write into the same logs and checkpoints)
    with run_lock(out, log) if rank == 0 else contextlib.nullcontext():
        if rank == 0:
            sweep_stale(out)        # temporary files of a killed save
        if resume and last.is_file():
            ckpt = _resume_checkpoint(last, device, cfg, model, ws.profile)
            load_weights(tr, ckpt["translator"], last, model)
            ema.load_state_dict(ckpt["ema"])
            opt_g.load_state_dict(ckpt["opt_g"])
            opt_d.load_state_dict(ckpt["opt_d"])
            sched_g.load_state_dict(ckpt["sched_g"])
            sched_d.load_state_dict(ckpt["sched_d"])
            epoch, step = ckpt["epoch"], ckpt["step"]
            best_psnr, best_epoch, seconds = ckpt["best_psnr"], ckpt["best_epoch"], ckpt["seconds"]
            set_rng_state(ckpt["rng"])
            if world > 1:   # the checkpoint holds rank 0's generators: the other ranks draw their own again
                seed_everything(seed * 1000 + rank + 7919 * epoch)
            if rank == 0:  # a kill between the log append and the checkpoint leaves rows of an unsaved epoch
                for name in ("log.csv", "val.csv"):
                    _truncate_csv(out / name, epoch)
                log(f"{model}: resuming from {last} at epoch {epoch}/{tc.epochs}")
        elif rank == 0:
            for stale in ("last.pt", "best.pt", "log.csv", "val.csv"):
                (out / stale).unlink(missing_ok=True)
        if rank == 0:               # the run starts: config.yaml is the config its checkpoints carry
            save_config(cfg, out / "config.yaml")

        warning = ema_horizon_warning(tc.ema_decay, tc.epochs * n_steps)
        if warning and rank == 0 and epoch == 0:
            log(f"{model}: warning: {warning}")
        amp = tc.amp and device.type == "cuda"
        commit = git_commit()
        ran = 0
        reporter = ProgressFile(out / PROGRESS_NAME, model, seed, tc.epochs * n_steps) if rank == 0 else None
        tr.train()
        while epoch < tc.epochs:
            t0 = time.time()
            train_set.set_epoch(epoch)  # unpaired: a new MR/CT shuffle per epoch, deterministic in (seed, epoch)
            bar = tqdm(_batches(train_set, tc.batch_size, seed, epoch, rank, world, tc.max_steps_per_epoch),
                       total=n_steps, desc=f"{model} epoch {epoch + 1}/{tc.epochs}", disable=not progress or rank != 0,
                       leave=False, file=sys.stdout, dynamic_ncols=True)
            rows = []
            for batch in bar:
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                logs = train_step(tr, batch, step, tc, opt_d, opt_g, amp, world)
                ema.update()
                step += 1
                row = {"epoch": epoch + 1, "step": step, "lr_g": opt_g.param_groups[0]["lr"], **logs}
                if not all(math.isfinite(v) for v in row.values()):
                    raise FloatingPointError(f"{model}: non-finite loss at step {step}: {row}")
                rows.append(row)
                bar.set_postfix(d=f"{row['d_total']:.3f}", g=f"{row['g_total']:.3f}")
                if reporter is not None:
                    reporter.update(step, epoch + 1, row, seconds + time.time() - t0)
            sched_g.step()
            sched_d.step()
            epoch += 1
            ran += 1
            seconds += time.time() - t0

            if rank == 0:
                _append_csv(out / "log.csv", rows)
                is_val = epoch % tc.val_every == 0 or epoch == tc.epochs
                if is_val:
                    with ema.swapped():
                        psnr = validate(tr, val_set, cfg, device, cfg.eval.max_test_slices)
                    _append_csv(out / "val.csv", [{"epoch": epoch, "step": step, "val_psnr": psnr,
                                                   "seconds": round(seconds, 1)}])
                    if psnr > best_psnr or best_epoch < 0:
                        best_psnr, best_epoch = psnr, epoch
                        atomic_save(make_checkpoint(tr, ema, None, normalisers, model, cfg, epoch, step, best_psnr,
                                                    best_epoch, seconds, commit, seed), out / "best.pt")
                    log(f"{model}: epoch {epoch}/{tc.epochs}  val PSNR {psnr:.2f} dB  (best {best_psnr:.2f} @ "
                        f"{best_epoch})  {seconds:.0f} s")
                atomic_save(make_checkpoint(tr, ema, (opt_g, opt_d, sched_g, sched_d), normalisers, model, cfg, epoch,
                                            step, best_psnr, best_epoch, seconds, commit, seed), last)
            if reporter is not None and rows:
                reporter.update(step, epoch, rows[-1], seconds, force=True)
            if world > 1:
                dist.barrier()
            if stop_after_epochs is not None and ran >= stop_after_epochs:
                break
        return RunResult(model, seed, out, best_psnr, best_epoch, epoch, step, seconds)


_RESUMABLE = ("ema", "opt_g", "opt_d", "sched_g", "sched_d", "rng", "epoch", "step", "best_psnr", "best_epoch",
              "seconds")


def _resume_checkpoint(last: Path, device, cfg: Config, model: str, profile: str) -> dict:
    """``last.pt`` read and checked to continue this run: readable, resumable, trained as ``model`` with ``cfg``
    (``same_run_config``); otherwise a RunError naming the file, the differences and ``--fresh``."""
    fresh = fresh_hint(model, profile)
    try:
        ckpt = read_checkpoint(last, device)
    except RunError as e:
        raise RunError(f"{last}: cannot be read, so the run cannot resume from it ({str(e)[len(str(last)) + 2:]}); "
                       f"start it over with {fresh}") from None
    missing = [k for k in _RESUMABLE if k not in ckpt]
    if missing:
        raise RunError(f"{last}: not a resumable checkpoint (no {', '.join(missing)}); start the run over with "
                       f"{fresh}")
    diffs = config_differences(ckpt.get("config"), cfg, model)
    if ckpt["model"] != model:
        diffs = {"model": (ckpt["model"], model), **diffs}
    if diffs:
        raise RunError(f"{last}: was trained with another model or config ({describe_differences(diffs)}); start it "
                       f"over with the current settings: {fresh}; or restore the settings of its config.yaml to "
                       f"resume it")
    return ckpt


def same_run_config(saved: dict | None, cfg: Config, model: str | None = None) -> bool:
    """Whether a checkpoint's config trains the same run of ``model`` as ``cfg``. Fields a newer mm2ct added take
    their defaults (a checkpoint from before ``train.jobs`` existed still resumes); ``train.jobs`` only says how
    many runs share the CPU and is ignored; so are the fusion settings (``fusion``, ``train.lambda_fusion``) for
    a model without a fusion module (CycleGAN, SynDiff). ``checkpoints.config_differences`` lists what differs."""
    return not config_differences(saved, cfg, model)


def ema_horizon_warning(decay: float, total_steps: int) -> str | None:
    """A warning when the EMA cannot forget its initial weights within the run: after n steps the initial
    weights still carry decay**n of the average (0.999 over 90 steps: 91 %), so an EMA evaluation of a short run
    scores an untrained model. None when decay**total_steps < 5 %."""
    if decay <= 0 or total_steps <= 0:
        return None
    left = decay ** total_steps
    if left < 0.05:
        return None
    return (f"train.ema_decay {decay} over {total_steps} steps: the EMA weights that are validated and saved still "
            f"hold {left:.0%} of the initial weights; lower ema_decay (below {0.05 ** (1 / total_steps):.4f}) "
            f"for runs this short")


PROGRESS_NAME = "progress.json"
PROGRESS_EVERY_S = 60.0  # train_all's progress lines while runs train in worker processes


class ProgressFile:
    """A run's progress for whoever watches it from outside (``train_all``'s progress lines, ``mm2ct reproduce``):
    ``<run>/progress.json`` = model, seed, step / total steps, epoch, the latest losses and seconds, rewritten
    atomically at most every ``every`` seconds."""

    def __init__(self, path: Path, model: str, seed: int, total_steps: int, every: float = 5.0):
        self.path, self.model, self.seed, self.total, self.every = path, model, seed, total_steps, every
        self.last = -math.inf

    def update(self, step: int, epoch: int, row: dict, seconds: float, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every and step < self.total:
            return
        self.last = now
        state = {"model": self.model, "seed": self.seed, "step": step, "total_steps": self.total, "epoch": epoch,
                 "g_total": row.get("g_total"), "d_total": row.get("d_total"), "seconds": round(seconds, 1)}
        write_text(self.path, json.dumps(state))


def read_progress(run: Path) -> dict | None:
    """The last ``progress.json`` of a run folder, or None (not started, or unreadable mid-write)."""
    try:
        return json.loads((run / PROGRESS_NAME).read_text())
    except (OSError, ValueError):
        return None


def progress_line(states: list[dict], done: int, total: int, elapsed: float) -> str:
    """``training: 2/7 runs done · mm2ct seed 42 step 120/450 (g 1.52, d 1.31) · ... · 5 min so far``: the runs
    under way (``states``: their ``progress.json``)."""
    parts = [f"training: {done}/{total} runs done"]
    parts += [f"{s['model']} seed {s['seed']} step {s['step']}/{s['total_steps']} (g {s['g_total']:.2f}, "
              f"d {s['d_total']:.2f})" for s in states]
    return " · ".join(parts) + f" · {elapsed / 60:.0f} min so far"


def _summary(r: RunResult) -> str:
    return (f"{r.model} seed {r.seed}: best val PSNR {r.best_psnr:.2f} dB at epoch {r.best_epoch}; "
            f"{r.steps} steps in {r.seconds:.0f} s -> {portable_path(r.run_dir, r.run_dir.parents[2])}")


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def _train_job(ws: Workspace, model: str, seed: int, resume: bool) -> RunResult:
    return train(ws, model, seed=seed, resume=resume, progress=False, log=lambda *a: None)


def train_all(ws: Workspace, models: list[str], seeds: list[int], jobs: int | None = None, resume: bool = True,
              progress: bool = True, log=print) -> list[RunResult]:
    """Train every (model, seed), in that order; returns their results in the same order.

    ``jobs`` (default ``train.jobs``) > 1 on CPU trains that many runs at once, each in its own process with
    ``cpu_count // jobs`` threads: the demo's small models run almost as fast on one thread as on two, so two
    processes nearly double the throughput. Each run is the same function as a sequential one (same checkpoints,
    resume, logs); only its thread count differs, which changes float summation order, not the algorithm.
    On CUDA, or under torchrun, runs go one after another.
    """
    jobs = ws.cfg.train.jobs if jobs is None else jobs
    if jobs < 1:
        raise ValueError(f"train.jobs must be >= 1, got {jobs}")
    t_start = time.monotonic()
    pairs = [(m, s) for m in models for s in seeds]
    distributed = dist.is_available() and dist.is_initialized()
    on_gpu = pick_device(ws.cfg.train.device, "train.device").type != "cpu"
    if jobs == 1 or len(pairs) == 1 or distributed or on_gpu:
        results = []
        for i, (m, s) in enumerate(pairs):
            if progress and (not distributed or dist.get_rank() == 0):
                log(f"training: run {i + 1}/{len(pairs)}: {m} seed {s} · {(time.monotonic() - t_start) / 60:.0f} min "
                    f"so far")
            results.append(train(ws, m, seed=s, resume=resume, progress=progress, log=log))
            if not distributed or dist.get_rank() == 0:
                log(_summary(results[-1]))
        return results

    import concurrent.futures as cf
    import multiprocessing as mp

    from mm2ct.data.slices import ensure_cache
    from mm2ct.ops import available_backends

    ensure_cache(ws)        # made once here, not raced by the workers
    available_backends()    # builds / loads the C++ scan kernel once, before the workers load it
    jobs = min(jobs, len(pairs))
    threads = cpu_threads(ws.cfg.train.threads, jobs)
    log(f"training {len(pairs)} runs, {jobs} at a time ({threads} thread(s) each)")
    with cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                initargs=(threads,)) as pool:
        # the costliest runs first (fusion models, then diffusion, then CycleGAN): less idle time at the end
        cost = {"mm2ct": 0, "syndiff": 1}
        order = sorted(range(len(pairs)), key=lambda i: (cost.get(pairs[i][0].split("_")[0], 2), i))
        futures = {pool.submit(_train_job, ws, *pairs[i], resume): i for i in order}
        results: list[RunResult | None] = [None] * len(pairs)
        pending = set(futures)
        while pending:
            finished, pending = cf.wait(pending, timeout=PROGRESS_EVERY_S, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                model, seed = pairs[futures[fut]]
                try:
                    r = fut.result()
                except Exception as e:
                    for other in futures:  # runs not started yet are dropped; running ones finish their epoch
                        other.cancel()
                    raise RuntimeError(f"training {model} seed {seed} failed: {type(e).__name__}: {e}") from e
                results[futures[fut]] = r
                log(_summary(r))
            if progress and pending:
                running = [read_progress(run_dir(ws, *pairs[futures[f]])) for f in pending if f.running()]
                log(progress_line([s for s in running if s], len(pairs) - len(pending), len(pairs),
                                  time.monotonic() - t_start))
    return results  # type: ignore[return-value]


def _truncate_csv(path: Path, epoch: int) -> None:
    """Keep only the rows of epochs <= ``epoch`` (the ones the checkpoint we resume from has seen)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    keep = [r for r in rows if int(r["epoch"]) <= epoch]
    if len(keep) != len(rows):
        path.unlink()
        _append_csv(path, keep)


def _append_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            w.writeheader()
        w.writerows(rows)


# ----------------------------------------------------------------------------------------------------- CLI
def check_models(models: list[str], where: str) -> None:
    """Every name a translator of ``mm2ct.translators.MODELS`` (checked before any of them trains)."""
    from mm2ct.translators import MODELS

    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ConfigError(f"{where}: unknown model{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; known: "
                          f"{', '.join(MODELS)}")


def configure(parser) -> None:
    from mm2ct.cli import positive_int

    parser.add_argument("--profile", default="demo", help="smoke | demo | paper | path/to/profile.yaml")
    parser.add_argument("--model", nargs="+", default=None,
                        help="translator name(s) (default: the profile's train.models)")
    parser.add_argument("--seed", type=int, nargs="+", default=None, help="seed(s) (default: train.seeds)")
    parser.add_argument("--data-dir", default=None, help="dataset folder (default: $MM2CT_DATA_DIR or the phantom)")
    parser.add_argument("--fresh", action="store_true",
                        help="start the run over: delete its last.pt, best.pt and logs instead of resuming")
    parser.add_argument("--jobs", type=positive_int, default=None,
                        help="CPU: runs trained at once in separate processes (default: train.jobs)")
    parser.add_argument("--no-progress", action="store_true")


def init_distributed(device: torch.device) -> None:
    """torchrun's process group: NCCL when the training device is CUDA (each rank on its LOCAL_RANK GPU, set before
    the group starts), gloo for CPU training even on a machine with GPUs; a one-hour timeout, because rank 0 builds
    the slice cache and validates while the others wait at a barrier (NCCL's default is 10 minutes)."""
    import datetime

    if device.type == "cuda":
        local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", timeout=datetime.timedelta(hours=1), device_id=local)
    else:
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=1))


def run(args) -> int:
    from mm2ct.workspace import resolve

    world = int(os.environ.get("WORLD_SIZE", "1"))
    ws = resolve(args.profile, args.data_dir)
    if world > 1 and not dist.is_initialized():
        init_distributed(pick_device(ws.cfg.train.device, "train.device"))
    models = args.model or list(ws.cfg.train.models)
    seeds = args.seed or list(ws.cfg.train.seeds)
    check_models(models, "--model" if args.model else "train.models")
    try:
        train_all(ws, models, seeds, jobs=args.jobs, resume=not args.fresh, progress=not args.no_progress)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0
