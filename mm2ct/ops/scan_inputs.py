"""Random selective-scan inputs shaped and scaled like a Mamba layer's at initialisation (docs/method.md §6.2).

Used by the tests, ``benchmarks/selective_scan.py`` and notebook 02, so that all three exercise the same regime.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def mamba_like_inputs(batch: int = 2, dim: int = 4, L: int = 33, N: int = 16, dtype: torch.dtype = torch.float32,
                      bc: str | tuple[str, str] = "variable", groups: int = 2, softplus: bool = True, seed: int = 0,
                      device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Keyword arguments for ``selective_scan`` (u, delta, A, B, C, D, z, delta_bias), drawn as at Mamba's init:

    A = -exp(A_log) with A_log = log(1..N) in every channel; D ~ 1; u, z, B, C ~ N(0, 1); the Δ bias is
    softplus^-1(dt) with dt log-uniform in [1e-3, 1e-1] and delta ~ N(0, 1), so Δ = softplus(delta + bias).
    With ``softplus=False`` delta is already positive (softplus(N(0, 1))) and the bias is dt itself.
    ``bc``: "variable" (batch, N, L), "grouped" (batch, groups, N, L) or "invariant" (dim, N), for B and C or as a
    (B kind, C kind) pair. Drawn in float64 from a seeded generator, then cast, so dtypes share the same values.
    """
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    dt = torch.exp(torch.rand(dim, generator=g, dtype=torch.float64) * (math.log(0.1) - math.log(1e-3))
                   + math.log(1e-3))
    x = dict(
        u=randn(batch, dim, L),
        delta=randn(batch, dim, L) if softplus else F.softplus(randn(batch, dim, L)),
        A=-torch.arange(1, N + 1, dtype=torch.float64).repeat(dim, 1),  # -exp(log(1..N)), (dim, N)
        D=1 + 0.1 * randn(dim),
        z=randn(batch, dim, L),
        delta_bias=dt + torch.log(-torch.expm1(-dt)) if softplus else dt,  # softplus^-1(dt) or dt
    )
    shapes = {"variable": (batch, N, L), "grouped": (batch, groups, N, L), "invariant": (dim, N)}
    kind_B, kind_C = (bc, bc) if isinstance(bc, str) else bc
    x["B"], x["C"] = randn(*shapes[kind_B]), randn(*shapes[kind_C])
    return {k: v.to(dtype=dtype, device=device) for k, v in x.items()}
