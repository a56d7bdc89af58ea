"""The CPU fast path of the depthwise causal conv (mm2ct/ops/causal_conv.py, docs/method.md §6.2) against its
reference ``causal_conv1d_ref`` (nn.Conv1d padded K-1, first L outputs): outputs and the gradients of x, weight and
bias; the dispatch of ``causal_conv1d``; the Mamba mixers with either conv.
"""
from __future__ import annotations

import pytest
import torch

from mm2ct.models.cross_modal import CrossModalMamba
from mm2ct.models.mamba import Mamba
from mm2ct.ops import causal_conv, causal_conv1d, causal_conv1d_ref
from mm2ct.ops.causal_conv import causal_conv1d_cpu


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|, in float64."""
    a, e = actual.detach().double(), expected.detach().double()
    return ((a - e).abs().max() / e.abs().max().clamp_min(1e-30)).item()


def _inputs(batch, dim, length, width, bias, layout, dtype=torch.float32, seed=0):
    """x (B, D, L) contiguous, as a (B, D, L) view of channel-last memory ("channel_last"), or as every other column
    of a wider map ("strided"); weight (D, K); bias (D,) or None. Leaves in float64, to be cast by the caller."""
    g = torch.Generator().manual_seed(seed)
    if layout == "contiguous":
        x = torch.randn(batch, dim, length, generator=g)
    elif layout == "channel_last":
        x = torch.randn(batch, length, dim, generator=g).transpose(1, 2)
    else:
        x = torch.randn(batch, dim, 2 * length, generator=g)[..., ::2]
    w, b = torch.randn(dim, width, generator=g), torch.randn(dim, generator=g) if bias else None
    return [t if t is None else t.to(dtype) for t in (x, w, b)]


def _out_and_grads(fn, x, w, b, activation, seed=1):
    """fn's output and the gradients of x, w (and b) of <out, r> for a fixed random r."""
    leaves = [t.detach().requires_grad_() for t in (x, w, b) if t is not None]
    out = fn(*leaves, *([None] if b is None else []), activation)
    r = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(out.dtype)
    return [out, *torch.autograd.grad(out, leaves, r)]


@pytest.mark.parametrize("layout", ["contiguous", "channel_last", "strided"])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("width", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-13), (torch.float32, 1e-6)])
def test_cpu_path_matches_reference(dtype, tol, width, bias, activation, layout):
    """Output and the gradients of x, weight and bias agree with the reference in the same dtype."""
    x, w, b = _inputs(3, 5, 17, width, bias, layout, dtype)
    fast, ref = (_out_and_grads(fn, x, w, b, activation) for fn in (causal_conv1d_cpu, causal_conv1d_ref))
    for name, f, r in zip(("out", "dx", "dw", "db"), fast, ref):
        assert f.dtype == r.dtype and f.shape == r.shape, name
        assert rel_err(f, r) <= tol, f"{name}: {rel_err(f, r):.1e}"


@pytest.mark.parametrize("length", [1, 2, 3, 4, 9])
def test_sequences_shorter_than_the_kernel(length):
    """L <= K - 1: the taps shifted past the end add nothing (x_s = 0 for s < 0)."""
    x, w, b = _inputs(2, 4, length, 4, True, "contiguous", torch.float64)
    fast, ref = (_out_and_grads(fn, x, w, b, "silu") for fn in (causal_conv1d_cpu, causal_conv1d_ref))
    assert all(rel_err(f, r) <= 1e-13 for f, r in zip(fast, ref))


def test_the_definition():
    """out_t = b + Σ_k w_k x_{t-(K-1)+k} with x_s = 0 for s < 0 (§6.2), written out per element."""
    x, w, b = _inputs(2, 3, 7, 3, True, "contiguous", torch.float64)
    expected = torch.zeros_like(x)
    for t in range(7):
        expected[..., t] = b + sum(w[:, k] * x[..., t - 2 + k] for k in range(3) if t - 2 + k >= 0)
    torch.testing.assert_close(causal_conv1d_cpu(x, w, b), expected, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_inputs_compute_in_float32(dtype):
    """16-bit x, weight, bias: out and gradients in that dtype, as close to the float64 result on the same rounded
    inputs as one rounding of each result (the sums run in float32, as oneDNN's conv does)."""
    x, w, b = _inputs(2, 8, 300, 4, True, "contiguous", dtype)
    fast = _out_and_grads(causal_conv1d_cpu, x, w, b, "silu")
    exact = _out_and_grads(causal_conv1d_ref, *(t.double() for t in (x, w, b)), "silu")
    eps = torch.finfo(dtype).eps
    for name, f, e in zip(("out", "dx", "dw", "db"), fast, exact):
        assert f.dtype == dtype, name
        assert rel_err(f, e) <= 2 * eps, f"{name}: {rel_err(f, e):.1e} > {2 * eps:.1e}"


def test_output_layout_is_the_references():
    """Without activation the output is laid out as the reference's (a view with row stride L + K - 1), so an
    elementwise op after it splits rows the same way; after the SiLU it is contiguous, as the reference's is."""
    x, w, b = _inputs(2, 6, 11, 4, True, "contiguous")
    assert causal_conv1d_cpu(x, w, b).stride() == causal_conv1d_ref(x, w, b).stride()
    assert causal_conv1d_cpu(x, w, b, "silu").is_contiguous()


# ------------------------------------------------------------------------------------------------ dispatch
@pytest.fixture
def cpu_calls(monkeypatch):
    """Count the calls of the CPU fast path from ``causal_conv1d``."""
    calls = []

    def counted(*args):
        calls.append(args[0].dtype)
        return causal_conv1d_cpu(*args)

    monkeypatch.setattr(causal_conv, "causal_conv1d_cpu", counted)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cpu_tensors_take_the_fast_path(cpu_calls, dtype):
    x, w, b = _inputs(2, 4, 10, 4, True, "contiguous", dtype)
    for backend in ("auto", "cpu", "torch"):
        causal_conv1d(x, w, b, "silu", backend=backend)
    assert cpu_calls == [dtype] * 3


def test_what_keeps_the_reference(cpu_calls):
    """Backend "ref" (the oracle end to end), tensors off the CPU (meta here) and mixed dtypes (which the reference
    rejects, as nn.Conv1d does) take ``causal_conv1d_ref``."""
    x, w, b = _inputs(2, 4, 10, 4, True, "contiguous")
    assert torch.equal(causal_conv1d(x, w, b, "silu", backend="ref"), causal_conv1d_ref(x, w, b, "silu"))
    assert causal_conv1d(x.to("meta"), w.to("meta"), b.to("meta"), "silu").device.type == "meta"
    with pytest.raises(RuntimeError):
        causal_conv1d(x.double(), w, b)
    assert cpu_calls == []


def test_bf16_autocast_casts_as_the_conv_would(cpu_calls):
    """Under CPU bfloat16 autocast the fast path gets the arguments autocast gives the reference's conv: out in
    bfloat16, float32 leaves get float32 gradients, all as close to the reference under autocast as bfloat16 allows."""
    x, w, b = _inputs(2, 8, 64, 4, True, "contiguous")
    results = []
    for fn in (causal_conv1d, causal_conv1d_ref):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            results.append(_out_and_grads(fn, x, w, b, "silu"))
    assert cpu_calls == [torch.bfloat16]
    for name, f, r in zip(("out", "dx", "dw", "db"), *results):
        assert f.dtype == r.dtype == (torch.bfloat16 if name == "out" else torch.float32), name
        assert rel_err(f, r) <= 2 ** -7, f"{name}: {rel_err(f, r):.1e}"


# ------------------------------------------------------------------------------------------------ in the mixers
def _mixer_grads(kind, length, ref_conv, monkeypatch):
    """A mixer's output and the gradients of its inputs and parameters, with the fast or the reference conv."""
    with monkeypatch.context() as m:
        if ref_conv:
            m.setattr(causal_conv, "causal_conv1d_cpu", lambda x, w, b, act: causal_conv1d_ref(x, w, b, act))
        torch.manual_seed(0)
        mixer, n = (Mamba(12, d_state=4), 1) if kind == "mamba" else (CrossModalMamba(12, d_state=4), 3)
        g = torch.Generator().manual_seed(1)
        xs = [torch.randn(2, length, 12, generator=g).requires_grad_() for _ in range(n)]
        out = mixer(*xs)
        leaves = [*xs, *mixer.parameters()]
        return [out, *torch.autograd.grad(out.square().sum(), leaves)]


@pytest.mark.parametrize("length", [29, 64])
@pytest.mark.parametrize("kind", ["mamba", "m3"])
def test_mixers_unchanged(kind, length, monkeypatch):
    """Mamba and M3 (three convs) give the same output and gradients (inputs and every parameter) with the fast conv
    as with the reference conv, within 1e-6 relative in float32."""
    fast = _mixer_grads(kind, length, False, monkeypatch)
    ref = _mixer_grads(kind, length, True, monkeypatch)
    assert len(fast) == len(ref)
    for i, (f, r) in enumerate(zip(fast, ref)):
        assert rel_err(f, r) <= 1e-6, f"tensor {i}: {rel_err(f, r):.1e}"
