"""The whole Mamba mixer after in_proj in one CUDA call: mamba-ssm's fused ``mamba_inner_fn`` (docs/method.md §6.2).

For xz = [u; z] (B, 2*D, L) it computes, like ``mm2ct.models.mamba.selective_ssm`` followed by out_proj,

    u' = SiLU(causal_conv1d(u));  [Δ_raw, B_t, C_t] = x_proj(u');  Δ = dt_proj(Δ_raw)   (bias inside the scan)
    y  = selective_scan(u', Δ, A, B_t, C_t, D, z, delta_bias, delta_softplus=True);   out = out_proj(y)

with the causal conv and the scan recomputed in backward (less memory than the unfused path). That unfused path is
its reference; ``fused_inner_applies`` says when the kernel can take over.
"""
from __future__ import annotations

import torch

from mm2ct.ops import cuda_kernels
from mm2ct.ops.selective_scan import requested_backend


def fused_inner_applies(xz: torch.Tensor, conv1d_weight: torch.Tensor, A: torch.Tensor, backend: str | None) -> bool:
    """Whether ``mamba_inner`` runs here: CUDA tensors, mamba-ssm and causal-conv1d importable, the scan backend
    asked for "auto" or "cuda", and shapes and dtypes the kernels take (conv width 2-4, N <= 256, real float32 A)."""
    return (xz.device.type == cuda_kernels.DEVICE_TYPE
            and requested_backend(backend or "auto") in ("auto", "cuda")
            and cuda_kernels.inner_kernel()[0] is not None
            and xz.dtype in cuda_kernels.KERNEL_DTYPES and conv1d_weight.dtype in cuda_kernels.KERNEL_DTYPES
            and conv1d_weight.dim() == 3 and conv1d_weight.shape[1] == 1
            and conv1d_weight.shape[2] in cuda_kernels.CONV_WIDTHS
            and A.dtype == torch.float32 and A.shape[-1] <= cuda_kernels.MAX_STATE)


def mamba_inner(xz: torch.Tensor, conv1d_weight: torch.Tensor, conv1d_bias: torch.Tensor | None,
                x_proj_weight: torch.Tensor, delta_proj_weight: torch.Tensor, out_proj_weight: torch.Tensor,
                out_proj_bias: torch.Tensor | None, A: torch.Tensor, D: torch.Tensor,
                delta_bias: torch.Tensor) -> torch.Tensor:
    """The fused kernel (call it where ``fused_inner_applies``): xz (B, 2*D, L) -> out (B, L, d_model).

    conv1d_weight: the nn.Conv1d's (D, 1, K); x_proj_weight (dt_rank + 2N, D); delta_proj_weight (D, dt_rank);
    out_proj_weight (d_model, D); A (D, N) = -exp(A_log) in float32; D and delta_bias (D,) in float32.
    B and C are input-dependent (taken from x_proj's output), Δ goes through softplus.
    """
    fn = cuda_kernels.inner_kernel()[0]
    return fn(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight, out_proj_bias,
              A, None, None, D.float(), delta_bias=delta_bias.float(), delta_softplus=True)
