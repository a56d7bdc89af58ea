"""Learnable descriptive convolution (LDC; Huang et al. 2022), MM2CT's "dynamic local convolution".

Code form (docs/method.md §5.2, open choice 13), a 3x3 conv whose centre tap is rescaled by a learnable gain:

    S[o, i]        = Σ_{u,v} W[o, i, u, v]
    W_eff[o,i,u,v] = W[o,i,u,v] · (1 − θ · M[o,i] · δ_centre(u,v) · S[o,i])
                   i.e. the centre tap becomes W_c · (1 − θ M S); every other tap equals W
    out            = conv2d(x, W_eff, stride 1, padding 1), no bias

θ (scalar) starts at 0.5 and M (C_out x C_in) at 1; δ_centre is a constant buffer. θ = 0 gives a plain conv.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class LDC(nn.Module):
    """3x3 learnable descriptive convolution: (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, theta: float = 0.5):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))  # W
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)  # nn.Conv2d's default init
        self.mask = nn.Parameter(torch.ones(out_channels, in_channels))  # M
        self.theta = nn.Parameter(torch.tensor(float(theta)))  # θ
        centre = torch.zeros(3, 3)
        centre[1, 1] = 1.0
        self.register_buffer("centre", centre, persistent=False)  # δ_centre

    def effective_weight(self) -> torch.Tensor:
        """W_eff (C_out, C_in, 3, 3) of §5.2."""
        tap_sum = self.weight.sum(dim=(2, 3))  # S: (C_out, C_in)
        gain = self.theta * self.mask * tap_sum  # θ M S: (C_out, C_in)
        return self.weight * (1 - gain[:, :, None, None] * self.centre)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.effective_weight(), padding=1)
