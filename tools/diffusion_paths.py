"""Which part of a trained SynDiff / MM2CT lags: paper-style PSNR on the validation slices of three MR -> CT paths.

    .venv/bin/python tools/diffusion_paths.py PROFILE MODEL [MODEL ...]     (reads runs/PROFILE/MODEL/best.pt)

- ``G_nd_ab(real MR)``: the non-diffusive generator (the CycleGAN half inside the model);
- ``G_diff_b | real MR``: 4-step sampling with the real MR as condition (the test path, = evaluation);
- ``G_diff_b | G_nd_ba(CT)``: 4-step sampling with the condition the diffusive generator sees in training
  (the non-diffusive translation of the real CT back to MR).

If the test path is much worse than the training path, the gap between fake and real MR is to blame; if both are
low while G_nd_ab is high, the diffusive generator itself has not learnt yet. Sampling seed 42, EMA weights.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from mm2ct.data.slices import SliceDataset
from mm2ct.metrics import paper_metrics
from mm2ct.checkpoints import load_checkpoint
from mm2ct.workspace import resolve


def main(profile: str, models: list[str]) -> None:
    ws = resolve(profile)
    val = SliceDataset(ws.cache_dir, "val", paired=True)
    items = [val[i] for i in range(len(val))]
    ct = torch.stack([torch.as_tensor(it["ct"]) for it in items])  # (N, 1, H, W)
    for model in models:
        tr, _, ckpt = load_checkpoint(ws.runs_dir / model / "best.pt")
        if not hasattr(tr, "G_diff_b"):
            raise SystemExit(f"{model}: not a diffusion model (no G_diff_b)")
        sources = {s: torch.stack([torch.as_tensor(it[s]) for it in items]) for s in tr.sources}
        g = torch.Generator().manual_seed(42)
        with torch.no_grad():
            cond_real = tr.condition(tr.mr(sources))
            paths = {"G_nd_ab(real MR)": tr.G_nd_ab(cond_real),
                     "G_diff_b | real MR (test path)": tr.generate(cond_real, g),
                     "G_diff_b | G_nd_ba(CT) (training path)": tr.generate(tr.condition(tr.G_nd_ba(ct)), g)}
        for name, pred in paths.items():
            psnr = np.mean([paper_metrics(p[0].numpy(), c[0].numpy())["psnr"] for p, c in zip(pred, ct)])
            print(f"{profile} {model} (epoch {ckpt['epoch']}): {name:40s} {psnr:6.2f} dB", flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2:])
