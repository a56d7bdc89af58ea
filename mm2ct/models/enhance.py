"""Dynamic enhancement (DE, paper Fig. 3a) and the final fusion block (Fig. 3b).

docs/method.md §4.1 (FusionMamba's DFEM), §4.2 (its CMFM block) and §8.3 (the MM2CT wiring implemented here, open
choices 12-14). With X1, X2 the modality maps after shallow fusion and F_M3 the output of the M3 stack, all
(B, C, H, W):

    g          = GAP(X1 − X2)                               (B, C, 1, 1) attention logits, no parameters
    w12, w21   = σ(g), σ(−g)                                 difference-aware attention (Fig. 3a)
    F1         = LDC1(X1) + w12 ⊙ F_M3 + X1                  DFEM (DE on)
    F2         = LDC2(X2) + w21 ⊙ F_M3 + X2
    Y          = M3(primary F_M3; auxiliary LN(F1), LN(F2))   one cross-modal Mamba block (§3.4)
    F_out      = F_M3 + Y + ECA(Y)                           final fusion (Fig. 3b)

With DE off (Table 2 row 2) the same final block runs on F1 = X1, F2 = X2. F1 and F2 only ever enter the output
through the nonlinear M3 block: a linear sum such as F_M3 + (F1 + F2)/2 would reduce the attention terms to
(w12 + w21)/2 ⊙ F_M3 = F_M3/2 for every input, since w21 = 1 − w12 (§8.3).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from mm2ct.models.cross_modal import M3Block
from mm2ct.models.ldc import LDC
from mm2ct.models.mamba import map_to_sequence, sequence_to_map


def attention_logits(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """g = GAP(x1 − x2): (B, C, H, W) maps -> (B, C, 1, 1) channel logits of the difference-aware attention."""
    return (x1 - x2).mean(dim=(2, 3), keepdim=True)


def difference_attention(x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(w12, w21) = (σ(g), σ(−g)) with g = GAP(x1 − x2): channel weights (B, C, 1, 1) (Fig. 3a, §4.1)."""
    g = attention_logits(x1, x2)
    return torch.sigmoid(g), torch.sigmoid(-g)


class DFEM(nn.Module):
    """Dynamic feature enhancement (§4.1): (F, X1, X2) -> (F1, F2), all (B, C, H, W).

    F_k = LDC_k(X_k) + w ⊙ F + X_k with (w12, w21) from ``difference_attention(X1, X2)``; ``weights`` replaces
    them (each broadcastable to (B, C, 1, 1)), which is how the tests and notebook 04 probe the attention.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.ldc1 = LDC(dim, dim)
        self.ldc2 = LDC(dim, dim)

    def forward(self, f: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor,
                weights: tuple[torch.Tensor, torch.Tensor] | None = None):
        w12, w21 = difference_attention(x1, x2) if weights is None else weights
        f1 = self.ldc1(x1) + w12 * f + x1  # (B, C, H, W)
        f2 = self.ldc2(x2) + w21 * f + x2
        return f1, f2


class ECA(nn.Module):
    """Efficient channel attention (FusionMamba's ``eca_layer``): x ⊙ σ(conv1d_k(GAP(x))) over the channel axis.

    (B, C, H, W) -> (B, C, H, W); one conv1d of width ``k`` (no bias) slides across the C pooled values.
    """

    def __init__(self, k: int = 3):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3))  # (B, C)
        gate = torch.sigmoid(self.conv(pooled.unsqueeze(1))).squeeze(1)  # (B, C)
        return x * gate[:, :, None, None]


class FinalFusion(nn.Module):
    """Fig. 3b (§8.3): (F_M3, F1, F2) -> F_out = F_M3 + Y + ECA(Y), Y = M3(F_M3; LN(F1), LN(F2)); maps (B, C, H, W).

    The M3 block's own LayerNorms on its auxiliary streams are the LN(F1), LN(F2) of FusionMamba's CMFM block.
    """

    def __init__(self, dim: int, **mixer_kwargs):
        super().__init__()
        self.m3 = M3Block(dim, **mixer_kwargs)
        self.eca = ECA()

    def forward(self, f: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
        h, w = f.shape[-2:]
        y, _ = self.m3(map_to_sequence(f1), map_to_sequence(f2), map_to_sequence(f), None, h, w)  # (B, L, C)
        y = sequence_to_map(y, h, w)  # Y: (B, C, H, W)
        return f + y + self.eca(y)
