"""Dynamic enhancement (DE): difference-aware attention (Fig. 3a) and the final fusion (Fig. 3b).

docs/method.md §4.1 (FusionMamba's DFEM) and §8.3 (the MM2CT wiring chosen here, open choices 12-14). With X1, X2 the
modality maps after shallow fusion and F the output of the M3 stack, all (B, C, H, W):

    w12 = σ(GAP(X1 − X2)),  w21 = σ(GAP(X2 − X1))           (B, C, 1, 1), no parameters
    F1  = LDC1(X1) + w12 ⊙ F + X1
    F2  = LDC2(X2) + w21 ⊙ F + X2
    F_out = F + (F1 + F2) / 2                                final fusion (§8.3 default)
"""
from __future__ import annotations

import torch
import torch.nn as nn

from mm2ct.models.ldc import LDC


def difference_attention(x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(w12, w21) = (σ(GAP(x1 − x2)), σ(GAP(x2 − x1))): channel weights (B, C, 1, 1) from (B, C, H, W) maps."""
    gap = (x1 - x2).mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    return torch.sigmoid(gap), torch.sigmoid(-gap)


class DynamicEnhancement(nn.Module):
    """DE + final fusion (§8.3): forward(x1, x2, f) -> F_out; ``enhance`` exposes F1, F2, w12, w21."""

    def __init__(self, dim: int):
        super().__init__()
        self.ldc1 = LDC(dim, dim)
        self.ldc2 = LDC(dim, dim)

    def enhance(self, x1: torch.Tensor, x2: torch.Tensor, f: torch.Tensor):
        """The two DFEM outputs (F1, F2) and the attention weights (w12, w21) of Fig. 3a."""
        w12, w21 = difference_attention(x1, x2)
        f1 = self.ldc1(x1) + w12 * f + x1  # (B, C, H, W)
        f2 = self.ldc2(x2) + w21 * f + x2
        return f1, f2, w12, w21

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        f1, f2, _, _ = self.enhance(x1, x2, f)
        return f + (f1 + f2) / 2  # Fig. 3b
