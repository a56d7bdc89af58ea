"""Depthwise causal convolution of the Mamba mixer (docs/method.md §6.2): a reference and causal-conv1d's kernel.

    out_t = act(b + Σ_{k=0}^{K-1} w_k x_{t-(K-1)+k})      per channel, x_s = 0 for s < 0; act = SiLU or identity

Same signature and semantics as causal-conv1d's ``causal_conv1d_fn(x, weight, bias, activation)``: x (B, D, L),
weight (D, K), bias (D,). mamba-ssm's ``Mamba`` holds the weight as an nn.Conv1d's (D, 1, K); callers pass
``conv.weight[:, 0]`` (a view, so gradients reach the module).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mm2ct.ops import cuda_kernels
from mm2ct.ops.selective_scan import requested_backend

ACTIVATIONS = (None, "silu")


def causal_conv1d_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      activation: str | None = None) -> torch.Tensor:
    """The definition: a grouped conv padded K-1 on both sides, first L outputs kept. (B, D, L) -> (B, D, L).

    The very ops of ``nn.Conv1d(D, D, K, groups=D, padding=K-1)(x)[..., :L]``, so results (and autocast's casts)
    are those of the module.
    """
    dim, width = weight.shape
    out = F.conv1d(x, weight.unsqueeze(1), bias, padding=width - 1, groups=dim)[..., : x.shape[-1]]  # (B, D, L)
    return F.silu(out) if activation == "silu" else out


def _kernel_applies(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """What causal-conv1d's kernel takes (csrc/causal_conv1d.cpp): float32/16/bf16, width 2-4, bias in weight's dtype."""
    return (x.device.type == cuda_kernels.DEVICE_TYPE and x.dtype in cuda_kernels.KERNEL_DTYPES
            and weight.dtype in cuda_kernels.KERNEL_DTYPES and weight.shape[1] in cuda_kernels.CONV_WIDTHS
            and (bias is None or bias.dtype == weight.dtype))


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  activation: str | None = None, backend: str = "auto") -> torch.Tensor:
    """Depthwise causal conv (+ SiLU): x (B, D, L), weight (D, K), bias (D,) -> (B, D, L) in x's dtype.

    causal-conv1d's kernel when the tensors are on CUDA, it is importable, the shapes and dtypes fit, and the
    selective-scan backend asked for is "auto" or "cuda" (``requested_backend``); else ``causal_conv1d_ref``.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"causal_conv1d: activation must be None or 'silu', got {activation!r}")
    if weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"causal_conv1d: weight must be (D={x.shape[1]}, K), got shape {tuple(weight.shape)}")
    kernel = cuda_kernels.conv_kernel()[0]
    if kernel is None or requested_backend(backend) not in ("auto", "cuda") or not _kernel_applies(x, weight, bias):
        return causal_conv1d_ref(x, weight, bias, activation)
    # channel-first (stride 1 along L): a (B, D, L) view of a channel-last tensor would take the kernel's
    # channel-last path, which needs D and the strides divisible by 8
    x = x if x.stride(-1) == 1 else x.contiguous()
    return kernel(x, weight, bias, activation=activation)
