"""Layout of the Mamba mixers (mm2ct/models/mamba.py ``project``): channel-first inside, no transposed copies.

The projections write (B, channels, L) directly, so the causal conv and the scan get contiguous inputs and no
tensor as wide as d_inner is copied between them (a quarter of the fusion module's CPU time went into such copies,
benchmarks/inference.py). Values are those of the plain ``nn.Linear`` formulation.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import mm2ct.models.mamba as mamba_mod
from mm2ct.models.channel_swap import TokenSwapMamba
from mm2ct.models.cross_modal import CrossModalMamba
from mm2ct.models.mamba import Mamba, project, project_out
from mm2ct.ops import selective_scan_ref

COPIES = {torch.ops.aten.copy_.default, torch.ops.aten.clone.default, torch.ops.aten._to_copy.default}


class CopyCounter(TorchDispatchMode):
    """Records (numel, whether the source is transposed: stride along the last axis != 1) of every copy-like aten op
    run under it."""

    def __init__(self):
        super().__init__()
        self.copies: list[tuple[int, bool]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in COPIES:
            src = args[1] if func == torch.ops.aten.copy_.default else args[0]
            self.copies.append((src.numel(), src.dim() > 1 and src.stride(-1) != 1))
        return func(*args, **(kwargs or {}))


def _mixer(kind: str, bias: bool, batch: int):
    torch.manual_seed(0)
    cls, n = {"mamba": (Mamba, 1), "m3": (CrossModalMamba, 3), "channel_swap": (TokenSwapMamba, 2)}[kind]
    g = torch.Generator().manual_seed(1)
    return cls(12, d_state=4, bias=bias, backend="ref"), [torch.randn(batch, 29, 12, generator=g) for _ in range(n)]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("kind", ["mamba", "m3", "channel_swap"])
def test_scan_inputs_are_channel_first_and_nothing_wide_is_transposed(kind, batch, monkeypatch):
    """Every scan gets u, delta and z as (B, d_inner, L) with stride 1 along L (contiguous for one sequence); no
    d_inner-wide tensor is copied out of a transposed layout (for one sequence: not copied at all)."""
    seen = []

    def scan(u, delta, A, B, C, D=None, z=None, backend="auto", **kw):
        seen.append([t.stride(-1) == 1 and (batch > 1 or t.is_contiguous()) for t in (u, delta, z)])
        return selective_scan_ref(u, delta, A, B, C, D, z, **kw)

    monkeypatch.setattr(mamba_mod, "selective_scan", scan)
    mixer, xs = _mixer(kind, bias=True, batch=batch)
    wide = batch * 29 * 24  # B * L * d_inner
    with CopyCounter() as counter:
        mixer(*xs)
    assert seen and all(all(flags) for flags in seen), seen
    assert [c for c in counter.copies if c[0] >= wide and (c[1] or batch == 1)] == []


@pytest.mark.parametrize("bias", [False, True])
def test_projections_equal_linear(bias):
    """``project`` (tokens or channel-first input) and ``project_out`` equal F.linear, float32 and float64."""
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(7, 5, bias=bias)
    x = torch.randn(3, 11, 7, generator=g)  # (B, L, C)
    for dtype, tol in ((torch.float32, 1e-6), (torch.float64, 1e-12)):
        lin_d, x_d = lin.to(dtype), x.to(dtype)
        got = project(lin_d.weight, x_d, lin_d.bias)
        assert got.is_contiguous() and got.shape == (3, 5, 11)
        torch.testing.assert_close(got, lin_d(x_d).transpose(1, 2), rtol=tol, atol=tol)
        torch.testing.assert_close(project(lin_d.weight, x_d.transpose(1, 2), lin_d.bias, tokens=False), got,
                                   rtol=tol, atol=tol)
        out = torch.nn.Linear(5, 7, bias=bias).to(dtype)
        torch.testing.assert_close(project_out(out, got), out(got.transpose(1, 2)), rtol=tol, atol=tol)


@pytest.mark.parametrize("kind", ["mamba", "m3", "channel_swap"])
def test_autocast_dtypes_are_those_of_linear(kind):
    """Under bfloat16 autocast the projections run in bfloat16 (as nn.Linear would) and the mixer output too."""
    mixer, xs = _mixer(kind, bias=True, batch=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lin = torch.nn.Linear(12, 24)
        assert project(lin.weight, xs[0], lin.bias).dtype == lin(xs[0]).dtype == torch.bfloat16
        outs = mixer(*xs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    assert all(o.dtype == torch.bfloat16 and torch.isfinite(o).all() for o in outs[:2 if kind == "channel_swap" else 1])
