"""Cross-modal Mamba (M3): MM2CT's deep fusion (paper §3.2; docs/method.md §3.4, MambaDFuse ``bimamba_type="m3"``).

Three projected streams share one output projection:

    [u0, g0] = in_proj(F̃)        F̃  = LN1(LN1(r_F))      fusion stream, uses A
    [u1, g1] = in_proj_extra1(Ĩ2) Ĩ2 = LN2(LN2(I2))       modality 2, uses A_b
    [u2, g2] = in_proj_extra2(Ĩ1) Ĩ1 = LN3(LN3(I1))       modality 1, uses A_b (shared with stream 1)
    y_s = SSM_s(SiLU(conv1d_s(u_s))) ⊙ SiLU(g_s)           own conv1d / x_proj / dt_proj / D per stream
    out = out_proj(y0 + y1 + y2)
    F'  = DWConv3x3(out) + out                              local refinement on the (B, C, H, W) map

The double LayerNorm, the shared A_b and the nn.Linear initialisation of the auxiliary Δ projections are MambaDFuse
code details kept on purpose (open choice 11). Parameter names follow MambaDFuse's mixer (suffixes ``_b``, ``_c`` for
streams 1 and 2).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from mm2ct.models.mamba import (init_dt_proj, map_to_sequence, ones_D, project, project_out, s4d_real_A_log,
                                selective_ssm, sequence_to_map)
from mm2ct.ops import fused_inner_applies, mamba_inner

AUX_DT_INITS = ("linear", "mamba")  # Δ init of the auxiliary streams: MambaDFuse's nn.Linear default | mamba-ssm's


class CrossModalMamba(nn.Module):
    """The three-stream M3 mixer: (F̃, Ĩ2, Ĩ1), each (B, L, d_model) -> (B, L, d_model).

    ``aux_dt_init`` sets the Δ projections of the two auxiliary streams (open choice 11): "linear" keeps PyTorch's
    nn.Linear initialisation, as MambaDFuse's code does (only the fusion stream's ``dt_proj`` gets mamba-ssm's Δ
    init there); "mamba" gives all three streams mamba-ssm's Δ init.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank="auto",
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init: str = "random", dt_scale: float = 1.0,
                 dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False,
                 backend: str | None = None, aux_dt_init: str = "linear"):
        super().__init__()
        if aux_dt_init not in AUX_DT_INITS:
            raise ValueError(f"cross_modal.CrossModalMamba: aux_dt_init must be one of {AUX_DT_INITS}, "
                             f"got {aux_dt_init!r}")
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.backend = backend
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.in_proj_extra1 = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.in_proj_extra2 = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        for suffix in ("", "_b", "_c"):
            setattr(self, "conv1d" + suffix, nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv,
                                                       groups=self.d_inner, padding=d_conv - 1, bias=conv_bias))
            setattr(self, "x_proj" + suffix, nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False))
            dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
            if suffix == "" or aux_dt_init == "mamba":
                init_dt_proj(dt_proj, dt_min, dt_max, dt_init, dt_scale, dt_init_floor)
            setattr(self, "dt_proj" + suffix, dt_proj)
            setattr(self, "D" + suffix, ones_D(self.d_inner))
        self.A_log = s4d_real_A_log(self.d_inner, d_state)
        self.A_b_log = s4d_real_A_log(self.d_inner, d_state)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def forward(self, f: torch.Tensor, extra1: torch.Tensor, extra2: torch.Tensor) -> torch.Tensor:
        """out_proj(y0 + y1 + y2); on CUDA each stream is one fused call (``mm2ct.ops.mamba_inner``) with the shared
        out_proj, as Σ_s out_proj(y_s) with its bias added once."""
        A = -torch.exp(self.A_log.float())  # (d_inner, N)
        A_b = -torch.exp(self.A_b_log.float())
        layers = ("conv1d", "x_proj", "dt_proj", "D")
        streams = [  # (xz (B, 2*d_inner, L), A, conv1d, x_proj, dt_proj, D) per stream
            (project(proj.weight, x, proj.bias), a, *(getattr(self, name + s) for name in layers))
            for proj, x, s, a in ((self.in_proj, f, "", A), (self.in_proj_extra1, extra1, "_b", A_b),
                                  (self.in_proj_extra2, extra2, "_c", A_b))
        ]
        if fused_inner_applies(streams[0][0], self.conv1d.weight, A, self.backend):
            return sum(
                mamba_inner(xz, conv.weight, conv.bias, x_proj.weight, dt_proj.weight, self.out_proj.weight,
                            self.out_proj.bias if i == 0 else None, a, D, dt_proj.bias)
                for i, (xz, a, conv, x_proj, dt_proj, D) in enumerate(streams)
            )  # (B, L, d_model)
        y = sum(selective_ssm(*xz.chunk(2, dim=1), conv, x_proj, dt_proj, a, D, self.backend)
                for xz, a, conv, x_proj, dt_proj, D in streams)  # (B, d_inner, L)
        return project_out(self.out_proj, y, channel_first=True)  # (B, L, d_model), a view of (B, d_model, L)


class M3Block(nn.Module):
    """One M3 block (§3.4): (I1, I2, F, r_F, H, W) -> (F', r_F'); tokens (B, L=H*W, C), r_F None at the start.

    I1 and I2 are not updated; the fusion stream carries its own residual (the residual-stream form of §3.1).
    """

    def __init__(self, dim: int, **mixer_kwargs):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.mixer = CrossModalMamba(dim, **mixer_kwargs)
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, f: torch.Tensor, residual: torch.Tensor | None,
                height: int, width: int):
        residual = f if residual is None else f + residual  # (B, L, C)
        out = self.mixer(self.norm1(self.norm1(residual)), self.norm2(self.norm2(x2)),
                         self.norm3(self.norm3(x1)))  # (B, L, C)
        out = sequence_to_map(out, height, width)  # (B, C, H, W)
        return map_to_sequence(self.dwconv(out) + out), residual
