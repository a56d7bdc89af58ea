"""Checkpoints and run folders: what a trained run leaves behind and how it is read back (no training loop here).

A run lives in ``<runs>/<profile>/<model>/`` (``<model>-seed<S>`` for the profile's other seeds). A checkpoint is a
dict with ``format`` = ``CHECKPOINT_FORMAT`` holding the model name, the resolved config, the translator's weights,
the EMA of its generators, the slice normalisers, epoch / step / best validation PSNR, the git commit and seed; a
``last.pt`` adds optimisers, schedulers and RNG states so that a killed run resumes exactly. ``load_checkpoint``
rebuilds the translator from the config it carries, so inference and evaluation need nothing else.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mm2ct.atomic import atomic_path
from mm2ct.config import from_dict, retire_keys
from mm2ct.workspace import Workspace

CHECKPOINT_FORMAT = "mm2ct-checkpoint/1"


def run_dir(ws: Workspace, model: str, seed: int | None = None) -> Path:
    """``runs/<profile>/<model>`` for the profile's first seed, ``runs/<profile>/<model>-seed<S>`` otherwise."""
    seed = ws.cfg.train.seeds[0] if seed is None else seed
    return ws.runs_dir / (model if seed == ws.cfg.train.seeds[0] else f"{model}-seed{seed}")


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
        if len(state) != len(self.shadow):
            raise ValueError(f"EMA state has {len(state)} tensors, the model {len(self.shadow)}")
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
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_checkpoint(tr, ema: EMA, opts, normalisers, model: str, cfg, epoch: int, step: int, best_psnr: float,
                    best_epoch: int, seconds: float, commit: str, seed: int) -> dict:
    """The checkpoint dict; ``opts`` = (opt_g, opt_d, sched_g, sched_d) for a resumable ``last.pt``, else None."""
    ckpt = {"format": CHECKPOINT_FORMAT, "model": model, "config": cfg.to_dict(), "translator": tr.state_dict(),
            "normalisers": normalisers,
            "ema": ema.state_dict(), "epoch": epoch, "step": step, "best_psnr": best_psnr, "best_epoch": best_epoch,
            "seconds": seconds, "git_commit": commit, "seed": seed, "torch": torch.__version__}
    if opts is not None:
        opt_g, opt_d, sched_g, sched_d = opts
        ckpt.update(opt_g=opt_g.state_dict(), opt_d=opt_d.state_dict(), sched_g=sched_g.state_dict(),
                    sched_d=sched_d.state_dict(), rng=rng_state())
    return ckpt


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through a temporary file in the same folder, then rename: a kill never leaves a half-written
    file, and a failed save leaves no temporary file."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def read_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict:
    """The checkpoint dict at ``path``, checked to be an mm2ct checkpoint (errors name the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a corrupt file
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an mm2ct checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    return ckpt


def checkpoint_config(ckpt: dict, path: str | os.PathLike):
    """The Config a checkpoint was trained with (keys a newer mm2ct retired are dropped)."""
    return from_dict(retire_keys(ckpt["config"]), source=str(path))


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu", ema: bool = True):
    """Rebuild the translator a checkpoint was trained as (from the config it carries) with its EMA weights
    (``ema=False``: the live weights). Returns (translator in eval mode, Config, checkpoint dict)."""
    from mm2ct.translators import build

    ckpt = read_checkpoint(path, device)
    cfg = checkpoint_config(ckpt, path)
    tr = build(ckpt["model"], cfg).to(device)
    tr.load_state_dict(ckpt["translator"])
    if ema and ckpt.get("ema") is not None:
        e = EMA(tr.generators(), cfg.train.ema_decay)
        e.load_state_dict(ckpt["ema"])
        e.copy_to_params()
    tr.eval()
    return tr, cfg, ckpt
