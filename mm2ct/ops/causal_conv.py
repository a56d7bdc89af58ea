"""Depthwise causal convolution of the Mamba mixer (docs/method.md §6.2): a reference, causal-conv1d's kernel on
CUDA (§6.4) and shifted multiply-adds on the CPU.

    out_t = act(b + Σ_{k=0}^{K-1} w_k x_{t-(K-1)+k})      per channel, x_s = 0 for s < 0; act = SiLU or identity

Same signature and semantics as causal-conv1d's ``causal_conv1d_fn(x, weight, bias, activation)``: x (B, D, L),
weight (D, K), bias (D,). mamba-ssm's ``Mamba`` holds the weight as an nn.Conv1d's (D, 1, K); callers pass
``conv.weight[:, 0]`` (a view, so gradients reach the module).

The CPU path (``causal_conv1d_cpu``) is the sum above written as K multiply-adds of shifted views of x, with a
backward of the same kind (dx: the transposed shifts; dw, db: reductions). Against oneDNN's depthwise ``F.conv1d``
(what the reference runs) it is faster forward + backward at every shape measured and forward on long sequences;
``benchmarks/inference.py --conv`` prints the ratios.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mm2ct.ops import cuda_kernels
from mm2ct.ops.scan_common import autocast_disabled, compute_dtype
from mm2ct.ops.selective_scan import requested_backend

ACTIVATIONS = (None, "silu")
CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)  # the CPU path's; 16-bit in float32


def causal_conv1d_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      activation: str | None = None) -> torch.Tensor:
    """The definition: a grouped conv padded K-1 on both sides, first L outputs kept. (B, D, L) -> (B, D, L).

    The very ops of ``nn.Conv1d(D, D, K, groups=D, padding=K-1)(x)[..., :L]``, so results (and autocast's casts)
    are those of the module.
    """
    dim, width = weight.shape
    out = F.conv1d(x, weight.unsqueeze(1), bias, padding=width - 1, groups=dim)[..., : x.shape[-1]]  # (B, D, L)
    return F.silu(out) if activation == "silu" else out


# ------------------------------------------------------------------------------------------------ CPU fast path
def _empty_like_ref(x: torch.Tensor, width: int, dtype: torch.dtype) -> torch.Tensor:
    """An empty (B, D, L) laid out as the reference's conv output: the first L columns of a (B, D, L + K - 1) block.

    Elementwise ops split a row into vector chunks and a scalar tail by this layout, so the SiLU after the conv
    rounds exactly as it does after the reference (a contiguous (B, D, L) moves the tails when L is not a multiple
    of the vector width).
    """
    batch, dim, length = x.shape
    row = length + width - 1
    return torch.empty_strided((batch, dim, length), (dim * row, row, 1), dtype=dtype, device=x.device)


def _taps(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """out = b + Σ_k w_k x_{t-(K-1)+k} (§6.2) as K multiply-adds of shifted views of x; x (B, D, L) any strides,
    weight (D, K), bias (D,) or None, out (B, D, L), one dtype for all. Returns out.

    The sum runs bias first, then k = 0, 1, ..., K-1, each step rounded: the order of oneDNN's depthwise conv, which
    it matches bit for bit on the machines tried (the parity tests allow the last bits to differ). Every pass has one
    per-channel operand at most (the bias is written first): with two, as in addcmul(b, x, w), PyTorch's CPU loop
    is not vectorised and runs about 4x slower.
    """
    length, width = x.shape[-1], weight.shape[1]
    out.copy_(bias[:, None].expand_as(out) if bias is not None else out.new_zeros(()).expand_as(out))  # (B, D, L)
    for k in range(max(0, width - length), width):  # taps shifted by L or more add nothing
        shift = width - 1 - k  # output t reads x[t - shift]
        out[..., shift:].addcmul_(x[..., : length - shift], weight[:, k, None])  # (B, D, L - shift)
    return out


def _conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``_taps`` in ``compute_dtype`` (16-bit inputs accumulate in float32, rounded once, as oneDNN's conv does):
    (B, D, L) -> (B, D, L) in x's dtype, laid out by ``_empty_like_ref``."""
    ctype, width = compute_dtype(x), weight.shape[1]
    acc = _taps(x.to(ctype), weight.to(ctype), None if bias is None else bias.to(ctype),
                _empty_like_ref(x, width, ctype))  # (B, D, L)
    return acc if ctype == x.dtype else _empty_like_ref(x, width, x.dtype).copy_(acc)


def _transposed_taps(g: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """dx_s = Σ_k w_k g_{s+(K-1)-k} (the adjoint of ``_taps``, g_t = 0 for t >= L): g (B, D, L), weight (D, K) ->
    (B, D, L) contiguous."""
    length, width = g.shape[-1], weight.shape[1]
    dx = torch.mul(g, weight[:, width - 1, None])  # (B, D, L): the unshifted tap
    for shift in range(1, min(width, length)):
        dx[..., : length - shift].addcmul_(g[..., shift:], weight[:, width - 1 - shift, None])  # (B, D, L - shift)
    return dx


def _weight_grad(g: torch.Tensor, x: torch.Tensor, width: int) -> torch.Tensor:
    """dw_k = Σ_{b,t} g_t x_{t-(K-1)+k} per channel: g, x (B, D, L) -> (D, K). One batched dot product per tap,
    (B·D, 1, L') @ (B·D, L', 1): it reads g and x once and writes no (B, D, L) product."""
    batch, dim, length = g.shape
    g2, x2 = g.reshape(batch * dim, length), x.reshape(batch * dim, length)  # (B·D, L): views unless B, D cannot merge
    dw = g.new_zeros(dim, width)
    for k in range(max(0, width - length), width):
        shift = width - 1 - k
        lhs = g2[:, shift:].unsqueeze(1)  # (B·D, 1, L - shift)
        rhs = x2[:, : length - shift].unsqueeze(1).transpose(1, 2)  # (B·D, L - shift, 1)
        dw[:, k] = torch.bmm(lhs, rhs).view(batch, dim).sum(0)
    return dw


class _CausalConv1dCPU(torch.autograd.Function):
    """``_conv`` (+ SiLU) and its adjoint, both made of shifted views: nothing is padded."""

    @staticmethod
    def forward(ctx, x, weight, bias, silu: bool):
        with autocast_disabled(x.device):  # the arguments are already cast (``causal_conv1d``)
            pre = _conv(x, weight, bias)  # (B, D, L), the conv before the activation
            out = F.silu(pre) if silu else pre
        ctx.save_for_backward(x, weight, pre if silu else None)
        ctx.has_bias, ctx.silu = bias is not None, silu
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight, pre = ctx.saved_tensors
        ctype, dx, dw, db = compute_dtype(x), None, None, None
        with autocast_disabled(x.device):  # backward runs under the caller's autocast state; bmm would obey it
            g = torch.ops.aten.silu_backward(grad, pre) if ctx.silu else grad  # (B, D, L) in x's dtype, as the ref's
            g = g.to(ctype).contiguous()
            if ctx.needs_input_grad[0]:
                dx = _transposed_taps(g, weight.to(ctype)).to(x.dtype)  # (B, D, L)
            if ctx.needs_input_grad[1]:
                dw = _weight_grad(g, x.to(ctype), weight.shape[1]).to(weight.dtype)  # (D, K)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                db = g.sum((0, 2)).to(weight.dtype)  # (D,)
        return dx, dw, db, None


def causal_conv1d_cpu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      activation: str | None = None) -> torch.Tensor:
    """The CPU fast path of ``causal_conv1d_ref``: same outputs and gradients (x, weight, bias) up to rounding.

    x (B, D, L) any strides, weight (D, K) any K >= 1, bias (D,) or None, all of one dtype of ``CPU_DTYPES``
    -> (B, D, L) in x's dtype, laid out as the reference's (a view with row stride L + K - 1 without activation,
    contiguous after the SiLU). Forward: K multiply-adds of shifted views; backward: dx as the K transposed shifts,
    dw and db as reductions. 16-bit inputs are computed in float32 and rounded once before the SiLU (as oneDNN's
    conv and the reference do).
    """
    return _CausalConv1dCPU.apply(x, weight, bias, activation == "silu")


def _cpu_path_applies(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """CPU tensors of one dtype of ``CPU_DTYPES`` (mixed dtypes go to the reference, which rejects them)."""
    return (all(t is None or (t.device.type == "cpu" and t.dtype == x.dtype) for t in (x, weight, bias))
            and x.dtype in CPU_DTYPES)


def _autocast_cast(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """What CPU autocast does to a conv's arguments: float32 and other 16-bit tensors to its dtype (float64 stays)."""
    dtype = torch.get_autocast_dtype("cpu")
    return tuple(t if t is None or t.dtype == torch.float64 else t.to(dtype) for t in (x, weight, bias))


def _kernel_applies(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """What causal-conv1d's kernel takes (csrc/causal_conv1d.cpp): float32/16/bf16, width 2-4, bias in weight's dtype."""
    return (x.device.type == cuda_kernels.DEVICE_TYPE and x.dtype in cuda_kernels.KERNEL_DTYPES
            and weight.dtype in cuda_kernels.KERNEL_DTYPES and weight.shape[1] in cuda_kernels.CONV_WIDTHS
            and (bias is None or bias.dtype == weight.dtype))


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  activation: str | None = None, backend: str = "auto") -> torch.Tensor:
    """Depthwise causal conv (+ SiLU): x (B, D, L), weight (D, K), bias (D,) -> (B, D, L) in x's dtype.

    causal-conv1d's kernel when the tensors are on CUDA, it is importable, the shapes and dtypes fit, and the
    selective-scan backend asked for is "auto" or "cuda" (``requested_backend``); else, for CPU tensors and any
    backend but "ref", ``causal_conv1d_cpu`` (under CPU autocast on the arguments autocast would give the conv);
    else ``causal_conv1d_ref`` (so backend "ref" is the reference end to end).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"causal_conv1d: activation must be None or 'silu', got {activation!r}")
    if weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"causal_conv1d: weight must be (D={x.shape[1]}, K), got shape {tuple(weight.shape)}")
    requested = requested_backend(backend)
    kernel = cuda_kernels.conv_kernel()[0]
    if kernel is not None and requested in ("auto", "cuda") and _kernel_applies(x, weight, bias):
        # channel-first (stride 1 along L): a (B, D, L) view of a channel-last tensor would take the kernel's
        # channel-last path, which needs D and the strides divisible by 8
        x = x if x.stride(-1) == 1 else x.contiguous()
        return kernel(x, weight, bias, activation=activation)
    if requested != "ref" and x.device.type == "cpu":
        args = _autocast_cast(x, weight, bias) if torch.is_autocast_enabled("cpu") else (x, weight, bias)
        if _cpu_path_applies(*args):
            return causal_conv1d_cpu(*args, activation)
    return causal_conv1d_ref(x, weight, bias, activation)
