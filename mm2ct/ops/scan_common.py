"""What every selective-scan backend shares (docs/method.md §6.2): the shape checks, the dtype rule (with autocast
switched off inside), and B/C per step.

The backends (``torch_scan``, ``cpu_kernel``) and the dispatcher with the reference (``selective_scan``) import this
module; it imports none of them, so the package's import graph has no cycle.
"""
from __future__ import annotations

import contextlib

import torch


def check_shapes(u, delta, A, B, C, D, z, delta_bias):
    """Validate shapes; return (batch, dim, L, N). B/C: (dim, N) | (batch, N, L) | (batch, G, N, L)."""
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, dim, L), got shape {tuple(u.shape)}")
    batch, dim, L = u.shape
    if tuple(delta.shape) != (batch, dim, L):
        raise ValueError(f"selective_scan: delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.is_complex():
        raise ValueError("selective_scan: complex A is not supported (Mamba's A is real)")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan: A must be (dim={dim}, N), got shape {tuple(A.shape)}")
    N = A.shape[1]
    for name, M in (("B", B), ("C", C)):
        ok = (
            (M.dim() == 2 and tuple(M.shape) == (dim, N))
            or (M.dim() == 3 and tuple(M.shape) == (batch, N, L))
            or (M.dim() == 4 and M.shape[0] == batch and M.shape[2:] == (N, L) and M.shape[1] > 0
                and dim % M.shape[1] == 0)
        )
        if not ok:
            raise ValueError(
                f"selective_scan: {name} must be ({dim}, {N}), ({batch}, {N}, {L}) or ({batch}, G, {N}, {L}) with "
                f"G dividing {dim}; got shape {tuple(M.shape)}"
            )
    for name, v in (("D", D), ("delta_bias", delta_bias)):
        if v is not None and tuple(v.shape) != (dim,):
            raise ValueError(f"selective_scan: {name} must be (dim={dim},), got shape {tuple(v.shape)}")
    if z is not None and tuple(z.shape) != (batch, dim, L):
        raise ValueError(f"selective_scan: z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")
    return batch, dim, L, N


def compute_dtype(*tensors) -> torch.dtype:
    """float64 if any input is float64, else float32 (half inputs are computed in float32, like mamba-ssm)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def autocast_disabled(device: torch.device):
    """A context with autocast off for ``device``: a scan computes in ``compute_dtype`` throughout, and under autocast
    its matrix products would otherwise run in float16/bfloat16. (No-op for devices without autocast, e.g. meta.)"""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def per_step(M, dim, L):
    """B or C as a tensor indexed (..., t, n) that broadcasts against (batch, dim, N) states per step."""
    if M.dim() == 2:  # (dim, N) time-invariant
        return M[None, :, None, :].expand(1, dim, L, M.shape[1])  # (1, dim, L, N)
    if M.dim() == 3:  # (batch, N, L)
        return M.transpose(1, 2)[:, None]  # (batch, 1, L, N)
    return M.repeat_interleave(dim // M.shape[1], dim=1).transpose(2, 3)  # (batch, dim, L, N)
