"""Channel-swapping Mamba: MM2CT's shallow fusion (paper §3.2; docs/method.md §3.3, after MambaDFuse).

Per block, for the two modality token streams I1, I2 (B, L, C) and their residual streams r1, r2:

    r_k <- I_k + r_k;   Ĩ_k = LN_k(r_k)
    (S1, S2) = channel_swap(Ĩ1, Ĩ2)          channels c with c % 2 == 0 exchanged, odd channels kept
    I_k <- Mamba_k(S_k)                      one mixer per modality
"""
from __future__ import annotations

import torch
import torch.nn as nn

from mm2ct.models.mamba import Mamba


def channel_swap(x1: torch.Tensor, x2: torch.Tensor, p: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Exchange the channels c with c % p == 0 (last dim) between x1 and x2; no parameters, exact.

    x1, x2: (..., C) of the same shape. Applying it twice gives back (x1, x2) (an involution).
    """
    if x1.shape != x2.shape:
        raise ValueError(f"channel_swap: inputs differ in shape, {tuple(x1.shape)} vs {tuple(x2.shape)}")
    swap = torch.arange(x1.shape[-1], device=x1.device) % p == 0  # (C,)
    return torch.where(swap, x2, x1), torch.where(swap, x1, x2)


class TokenSwapMamba(nn.Module):
    """One channel-swapping Mamba block (§3.3): (I1, I2, r1, r2) -> (I1', I2', r1', r2'), all (B, L, C).

    Residual streams may be None at the start (treated as 0).
    """

    def __init__(self, dim: int, **mixer_kwargs):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mixer1 = Mamba(dim, **mixer_kwargs)
        self.mixer2 = Mamba(dim, **mixer_kwargs)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, r1: torch.Tensor | None = None,
                r2: torch.Tensor | None = None):
        r1 = x1 if r1 is None else x1 + r1  # (B, L, C)
        r2 = x2 if r2 is None else x2 + r2
        s1, s2 = channel_swap(self.norm1(r1), self.norm2(r2))
        return self.mixer1(s1), self.mixer2(s2), r1, r2
