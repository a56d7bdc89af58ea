"""Checkpoints and run folders: what a trained run leaves behind and how it is read back (no training loop here).

A run lives in ``<runs>/<profile>/<model>/`` (``<model>-seed<S>`` for the profile's other seeds). A checkpoint is a
dict with ``format`` = ``CHECKPOINT_FORMAT`` holding the model name, the resolved config, the translator's weights,
the EMA of its generators, the slice normalisers, epoch / step / best validation PSNR, the git commit and seed; a
``last.pt`` adds optimisers, schedulers and RNG states so that a killed run resumes exactly. ``load_checkpoint``
rebuilds the translator from the config it carries, so inference and evaluation need nothing else.

While a run trains, ``run_lock`` holds ``train.lock`` in its folder (the holder's pid, host and start time): a second
training of the same run is refused, and a lock whose process no longer exists is taken over. Errors a user can act
on (a locked folder, an unreadable or mismatched checkpoint, a refused resume) are ``RunError``s naming the file and
what to do; a failed save is a ``SaveError`` (an OSError) naming the file and the free space.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mm2ct.atomic import atomic_path, pid_alive, temporary_name
from mm2ct.config import ConfigError, from_dict, retire_keys
from mm2ct.provenance import machine
from mm2ct.workspace import Workspace

CHECKPOINT_FORMAT = "mm2ct-checkpoint/1"
LOCK_NAME = "train.lock"
_REQUIRED = ("model", "config", "translator")


class RunError(ValueError):
    """A run folder or checkpoint that cannot be used as it is; the message names the file and what to do."""


class SaveError(OSError):
    """A checkpoint could not be written (a full disk, a permission); the message names the file and what to do."""


def fresh_hint(model: str | None = None, profile: str | None = None) -> str:
    """How to start a run over: the command line, and the library call."""
    args = (f" --profile {profile}" if profile else "") + (f" --model {model}" if model else "")
    return f"`mm2ct train{args} --fresh` (train(..., resume=False))"


def run_dir(ws: Workspace, model: str, seed: int | None = None) -> Path:
    """``runs/<profile>/<model>`` for the profile's first seed, ``runs/<profile>/<model>-seed<S>`` otherwise."""
    seed = ws.cfg.train.seeds[0] if seed is None else seed
    return ws.runs_dir / (model if seed == ws.cfg.train.seeds[0] else f"{model}-seed{seed}")


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _create(path: Path, text: str) -> bool:
    """Create ``path`` holding ``text`` only if it does not exist (a complete file appears at once); False if it
    exists."""
    tmp = temporary_name(path)
    try:
        tmp.write_text(text)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:                # no hard links on this file system: exclusive create, then write
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(text)
        return True
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, log=None) -> Iterator[Path]:
    """Hold ``folder/train.lock`` (pid, host, start time of this process) for the duration of the block.

    Another holder whose process is alive (same host), or on another host (it cannot be checked from here), makes
    this a ``RunError`` naming the folder and the holder; a lock left by a process that no longer exists (same host)
    or an unreadable one older than a minute is stale and taken over. The lock is removed at the end of the block."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    host = socket.gethostname()
    me = {"pid": os.getpid(), "host": host, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
        if _create(path, json.dumps(me)):
            break
        holder = _read_lock(path)
        if holder is None:
            try:
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                continue
            if age < 60:
                raise RunError(f"{folder}: in use by another training (its lock {path} is being written); wait, "
                               f"or delete {path} if no training of this run is running")
            stale = "an unreadable lock"
        elif holder.get("host") != host:
            raise RunError(f"{folder}: in use by another training (pid {holder.get('pid')} on host "
                           f"{holder.get('host')}, since {holder.get('started', '?')}); mm2ct cannot check a process "
                           f"on another machine: if it no longer runs, delete {path}")
        elif pid_alive(int(holder.get("pid", -1))):
            raise RunError(f"{folder}: in use by another training (pid {holder['pid']} on this host, since "
                           f"{holder.get('started', '?')}); wait for it to finish (two trainings of one run would "
                           f"write into the same files)")
        else:
            stale = f"the lock of pid {holder.get('pid')}, which no longer runs"
        path.unlink(missing_ok=True)
        if log:
            log(f"{folder}: removed {stale}")
    else:
        raise RunError(f"{folder}: could not take the lock {path}; another training keeps taking it")
    try:
        yield path
    finally:
        if _read_lock(path) == me:
            path.unlink(missing_ok=True)


class EMA:
    """Exponential moving average of the generators' parameters (SynDiff ``--use_ema``; method.md §2.7).

    shadow <- decay * shadow + (1 - decay) * param after every generator step. ``swapped()`` puts the averages into
    the modules for evaluation and restores the live weights afterwards.
    """

    def __init__(self, modules: list[torch.nn.Module], decay: float):
        self.decay = decay
        self.params = [p for m in modules for p in m.parameters()]
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - self.decay)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for s, p in zip(self.shadow, self.params):
            p.copy_(s)

    def swapped(self):
        ema = self

        class _Swap:
            def __enter__(self):
                self.live = [p.detach().clone() for p in ema.params]
                ema.copy_to_params()

            def __exit__(self, *exc):
                with torch.no_grad():
                    for live, p in zip(self.live, ema.params):
                        p.copy_(live)

        return _Swap()

    def state_dict(self) -> list[torch.Tensor]:
        return [s.clone() for s in self.shadow]

    def load_state_dict(self, state: list[torch.Tensor]) -> None:
        if len(state) != len(self.shadow) or any(s.shape != v.shape for s, v in zip(self.shadow, state)):
            raise ValueError(f"EMA state has {len(state)} tensors, the model {len(self.shadow)}, or their shapes "
                             f"differ")
        with torch.no_grad():
            for s, v in zip(self.shadow, state):
                s.copy_(v)


def rng_state() -> dict[str, Any]:
    """Python's, NumPy's, torch's (and CUDA's) global generator states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore ``rng_state()``. The generator states are moved to the CPU first (a checkpoint read with
    ``map_location="cuda"`` carries them on the GPU, where torch refuses them); CUDA states are restored for as many
    devices as both the checkpoint and this machine have."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        saved = [s.cpu() for s in state["cuda"]]
        for i, s in enumerate(saved[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)


def make_checkpoint(tr, ema: EMA, opts, normalisers, model: str, cfg, epoch: int, step: int, best_psnr: float,
                    best_epoch: int, seconds: float, commit: str, seed: int) -> dict:
    """The checkpoint dict; ``opts`` = (opt_g, opt_d, sched_g, sched_d) for a resumable ``last.pt``, else None."""
    ckpt = {"format": CHECKPOINT_FORMAT, "model": model, "config": cfg.to_dict(), "translator": tr.state_dict(),
            "normalisers": normalisers,
            "ema": ema.state_dict(), "epoch": epoch, "step": step, "best_psnr": best_psnr, "best_epoch": best_epoch,
            "seconds": seconds, "git_commit": commit, "seed": seed, "torch": torch.__version__, "machine": machine()}
    if opts is not None:
        opt_g, opt_d, sched_g, sched_d = opts
        ckpt.update(opt_g=opt_g.state_dict(), opt_d=opt_d.state_dict(), sched_g=sched_g.state_dict(),
                    sched_d=sched_d.state_dict(), rng=rng_state())
    return ckpt


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through a temporary file in the same folder, then rename: a kill never leaves a half-written
    file, and a failed save leaves no temporary file but a ``SaveError`` naming the file and the free space (torch
    reports a full disk as "enforce fail at inline_container.cc")."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except (OSError, RuntimeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else \
            str(e) if isinstance(e, OSError) else "torch could not write the file"
        try:
            free = f"{shutil.disk_usage(path.parent).free / 2**20:.0f} MB free on its disk"
        except OSError:
            free = "free space unknown"
        raise SaveError(f"{path}: could not save the checkpoint ({reason}; {free}); free some space or put the work "
                        f"directory elsewhere (--workdir), then run again: training resumes from the last saved "
                        f"epoch") from e


def read_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict:
    """The checkpoint dict at ``path``, checked to be an mm2ct checkpoint (errors name the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a corrupt file
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise RunError(f"{path}: not a readable checkpoint ({type(e).__name__}: {first}); a truncated or corrupt "
                       f"file") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise RunError(f"{path}: not an mm2ct checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise RunError(f"{path}: an incomplete mm2ct checkpoint (no {', '.join(missing)})")
    return ckpt


def checkpoint_config(ckpt: dict, path: str | os.PathLike):
    """The Config a checkpoint was trained with (keys a newer mm2ct retired are dropped)."""
    return from_dict(retire_keys(ckpt["config"]), source=str(path))


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        out.update(_flat(v, key) if isinstance(v, dict) else {key: v})
    return out


def config_differences(saved: dict | None, cfg, model: str | None = None,
                       ignore: tuple[str, ...] = ("train.jobs", "train.threads"),
                       ) -> dict[str, tuple[Any, Any]]:
    """{field: (value in ``saved``, value in ``cfg``)} for every setting in which a checkpoint's config differs from
    ``cfg``. Fields a newer mm2ct added take their defaults; ``ignore`` lists fields or sections that do not count
    (``train.jobs`` and ``train.threads`` only say how the CPU is shared); the fusion settings (``fusion``,
    ``train.lambda_fusion``) do not count for a model without a fusion module (CycleGAN, SynDiff)."""
    if not isinstance(saved, dict):
        return {"config": ("missing", "present")}
    try:
        old = from_dict(retire_keys(saved))
    except ConfigError as e:           # a field this version no longer knows, or no longer allows
        return {"config": (f"not readable by this version ({e})", "the current settings")}
    skip = set(ignore)
    if model is not None:
        from mm2ct.translators import MODELS

        if model in MODELS and MODELS[model][0] != "mm2ct":
            skip |= {"fusion", "train.lambda_fusion"}
    a, b = _flat(old.to_dict()), _flat(cfg.to_dict())
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not any(k == s or k.startswith(s + ".") for s in skip)}


def describe_differences(diffs: dict[str, tuple[Any, Any]], limit: int = 4) -> str:
    """``train.lr_g: 0.00016 in the checkpoint, 0.001 now; ...`` (the first ``limit``)."""
    items = [f"{k}: {a!r} in the checkpoint, {b!r} now" if isinstance(a, str) or isinstance(b, str)
             else f"{k}: {a} in the checkpoint, {b} now" for k, (a, b) in diffs.items()]
    return "; ".join(items[:limit]) + (f"; and {len(items) - limit} more" if len(items) > limit else "")


# what may differ between training and evaluation: the evaluation's own settings and where it runs
EVALUATION_SETTINGS = ("train.jobs", "train.threads", "train.deterministic", "train.device", "train.amp", "scan",
                       "eval")


def check_trained_with(ckpt: dict, cfg, path: str | os.PathLike, profile: str) -> None:
    """Refuse to evaluate a checkpoint under settings it was not trained with (a profile edited after training:
    ``data.hu_max`` changes the HU of every number; the reports would file them under the profile as it is now).
    Only ``EVALUATION_SETTINGS`` may differ. RunError naming the file, the fields and what to do."""
    diffs = config_differences(ckpt.get("config"), cfg, ckpt.get("model"), ignore=EVALUATION_SETTINGS)
    if diffs:
        raise RunError(f"{path}: was trained with other settings than profile {profile} has now "
                       f"({describe_differences(diffs)}); its numbers would not be the profile's: restore those "
                       f"settings (the run's config.yaml holds them) or train the run again with the current ones: "
                       f"{fresh_hint(ckpt.get('model'), profile)}")


def load_weights(module: torch.nn.Module, state: dict, path: str | os.PathLike, model: str) -> None:
    """``module.load_state_dict(state)``, or a short ``RunError`` naming the file when the weights do not fit (another
    family or width: counts and one example each, not torch's list of every key)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unknown = [k for k in state if k not in own]
    shapes = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items()
              if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unknown or shapes:
        parts = ([f"{len(missing)} weights missing, e.g. {missing[0]}"] if missing else []) + \
                ([f"{len(unknown)} unknown, e.g. {unknown[0]}"] if unknown else []) + \
                ([f"{len(shapes)} of another shape, e.g. {shapes[0][0]}: {shapes[0][1]} in the file, {shapes[0][2]} "
                  f"in the model"] if shapes else [])
        raise RunError(f"{path}: its weights do not fit the {model!r} translator its config describes "
                       f"({'; '.join(parts)}): written by another version of mm2ct or edited; train it again "
                       f"({fresh_hint(model)})")
    module.load_state_dict(state)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu", ema: bool = True):
    """Rebuild the translator a checkpoint was trained as (from the config it carries) with its EMA weights
    (``ema=False``: the live weights). Returns (translator in eval mode, Config, checkpoint dict)."""
    from mm2ct.translators import MODELS, build

    ckpt = read_checkpoint(path, device)
    cfg = checkpoint_config(ckpt, path)
    if ckpt["model"] not in MODELS:
        raise RunError(f"{path}: a checkpoint of model {ckpt['model']!r}, which this version of mm2ct does not know "
                       f"(known: {', '.join(MODELS)})")
    tr = build(ckpt["model"], cfg).to(device)
    load_weights(tr, ckpt["translator"], path, ckpt["model"])
    if ema and ckpt.get("ema") is not None:
        e = EMA(tr.generators(), cfg.train.ema_decay)
        try:
            e.load_state_dict(ckpt["ema"])
        except ValueError as err:
            raise RunError(f"{path}: its EMA weights do not fit the model ({err})") from None
        e.copy_to_params()
    tr.eval()
    return tr, cfg, ckpt
