"""Selective scan of the Mamba SSM (docs/method.md §6.2), with backends behind one signature.

    Δ_t  = softplus(delta_t + delta_bias)          (softplus only if ``delta_softplus``)
    h_t  = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t       (ZOH for A, Euler for B)
    y_t  = C_t · h_t + D u_t
    out  = y ⊙ silu(z)                              (only if ``z`` is given)

Same signature and semantics as mamba-ssm's ``selective_scan_fn``. Backends: ``cuda`` (mamba-ssm's kernel,
imported in mm2ct/ops/cuda_kernels.py), ``cpu`` (fused C++ kernel, mm2ct/ops/csrc), ``torch`` (pure PyTorch, any
device), ``ref`` (the sequential definition, the test oracle).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from mm2ct.ops import cpu_kernel, cuda_kernels
from mm2ct.ops.scan_common import check_shapes, compute_dtype, per_step
from mm2ct.ops.torch_scan import selective_scan_torch

BACKENDS = ("cuda", "cpu", "torch", "ref")
ENV_VAR = "MM2CT_SCAN_BACKEND"
_default_backend = "auto"


# ----------------------------------------------------------------------------------------------- reference
def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """The sequential definition of the selective scan (docs/method.md §6.2); the test oracle (use float64).

    u, delta, z: (batch, dim, L); A: (dim, N); B, C: (dim, N), (batch, N, L) or (batch, G, N, L); D, delta_bias: (dim,).
    Returns out (batch, dim, L) in u's dtype, and the last state (batch, dim, N) if ``return_last_state``.
    A Python loop over L: steps are taken with ``unbind`` so autograd stays O(L).
    """
    batch, dim, L, N = check_shapes(u, delta, A, B, C, D, z, delta_bias)
    ct = compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    dtype_in = u.dtype
    u, delta, A, B, C = (t.to(ct) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    deltaA = torch.exp(delta[..., None] * A[:, None, :])  # (batch, dim, L, N)
    deltaB_u = (delta * u)[..., None] * per_step(B, dim, L)  # (batch, dim, L, N)
    h = u.new_zeros(batch, dim, N)
    ys = []
    for dA_t, dBu_t, C_t in zip(deltaA.unbind(2), deltaB_u.unbind(2), per_step(C, dim, L).unbind(2)):
        h = dA_t * h + dBu_t  # (batch, dim, N)
        ys.append((h * C_t).sum(-1))  # (batch, dim)
    out = torch.stack(ys, dim=-1) if ys else u.new_zeros(batch, dim, 0)  # (batch, dim, L)
    if D is not None:
        out = out + u * D.to(ct)[:, None]
    if z is not None:
        out = out * F.silu(z.to(ct))
    out = out.to(dtype_in)
    return (out, h) if return_last_state else out


# ----------------------------------------------------------------------------------------------- dispatch
def _cuda_fn():
    """mamba-ssm's selective_scan_fn, or raise RuntimeError saying why it cannot be used."""
    fn, why = cuda_kernels.scan_kernel()
    if fn is None:
        raise RuntimeError(f"selective_scan backend 'cuda' is unavailable: {why}")
    return fn


def _kernel_inputs(u, delta, A, B, C, D, z, delta_bias):
    """The dtypes mamba-ssm's kernel insists on (csrc/selective_scan/selective_scan.cpp): delta, z and input-dependent
    B/C in u's dtype (float32, float16 or bfloat16); A, D, delta_bias and time-invariant B/C in float32.
    Under autocast a Mamba layer already passes them so; the casts are no-ops then."""
    if u.dtype not in cuda_kernels.KERNEL_DTYPES:
        raise ValueError(f"selective_scan backend 'cuda' takes float32, float16 or bfloat16 inputs, got {u.dtype} "
                         f"(the 'torch' backend computes in float64)")

    def cast(t, dtype):
        return None if t is None else t.to(dtype)

    def operand(M):
        return cast(M, u.dtype if M.dim() > 2 else torch.float32)

    return (u, cast(delta, u.dtype), cast(A, torch.float32), operand(B), operand(C), cast(D, torch.float32),
            cast(z, u.dtype), cast(delta_bias, torch.float32))


def _cpu_fn():
    """The fused C++ kernel's scan, or raise RuntimeError saying why it cannot be used."""
    cpu_kernel.load_module()
    return cpu_kernel.selective_scan_cpu


def set_default_backend(name: str) -> None:
    """Default backend used when a call passes ``backend="auto"`` (``ScanConfig.backend`` sets it).

    A non-``auto`` default wins over the environment variable MM2CT_SCAN_BACKEND, which wins over auto-selection.
    """
    global _default_backend
    _validate(name, "set_default_backend")
    _default_backend = name


def get_default_backend() -> str:
    return _default_backend


def _validate(name: str, where: str) -> str:
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"{where}: unknown selective-scan backend {name!r}; valid: auto, {', '.join(BACKENDS)}")
    return name


def requested_backend(backend: str) -> str:
    """The backend asked for: explicit argument > set_default_backend > $MM2CT_SCAN_BACKEND; "auto" if none is.

    The CUDA kernels beside the scan (causal conv, fused inner function) are used when this is "auto" or "cuda".
    """
    name = _validate(backend, "selective_scan(backend=...)")
    if name == "auto":
        name = _default_backend
    if name == "auto":
        name = _validate(os.environ.get(ENV_VAR, "auto").strip() or "auto", f"${ENV_VAR}")
    return name


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """The backend a call runs on: explicit argument > set_default_backend > $MM2CT_SCAN_BACKEND > auto.

    auto = cuda (mamba-ssm, CUDA tensors of a dtype its kernel takes) > cpu (fused C++ kernel, CPU tensors) > torch.
    """
    name = requested_backend(backend)
    if name != "auto":
        return name
    if device.type == cuda_kernels.DEVICE_TYPE:
        ok = cuda_kernels.scan_kernel()[0] is not None and dtype in cuda_kernels.KERNEL_DTYPES
        return "cuda" if ok else "torch"
    if device.type == "cpu":
        return "cpu" if cpu_kernel.usable(warn=True) else "torch"
    return "torch"


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, backend="auto"):
    """Selective scan (docs/method.md §6.2) with mamba-ssm ``selective_scan_fn`` semantics.

    u, delta, z: (batch, dim, L); A: (dim, N) real; B, C: (batch, N, L), (batch, G, N, L) or (dim, N);
    D, delta_bias: (dim,). Returns out (batch, dim, L) in u's dtype (computed in float32, float64 for float64
    inputs) and, if ``return_last_state``, the last state (batch, dim, N).
    ``backend``: "auto" | "cuda" | "cpu" | "torch" | "ref" (see ``resolve_backend``). The "cuda" kernel ignores the
    gradient of the last state (mamba-ssm's documented limitation).
    """
    check_shapes(u, delta, A, B, C, D, z, delta_bias)
    name = resolve_backend(backend, u.device, u.dtype)
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if name == "ref":
        return selective_scan_ref(*args)
    if name == "torch":
        return selective_scan_torch(*args)
    if name == "cuda":
        if u.device.type != cuda_kernels.DEVICE_TYPE:
            raise RuntimeError(f"selective_scan backend 'cuda' needs CUDA tensors, got device {u.device}")
        return _cuda_fn()(*_kernel_inputs(*args[:8]), delta_softplus, return_last_state)
    if u.device.type != "cpu":
        raise RuntimeError(f"selective_scan backend 'cpu' needs CPU tensors, got device {u.device}")
    return _cpu_fn()(*args)


def available_backends() -> dict[str, tuple[bool, str]]:
    """For each backend: (usable here, short reason). Builds (or loads the cached) C++ kernel to answer for "cpu"."""
    return {
        "cuda": cuda_kernels.status()["selective_scan"],
        "cpu": cpu_kernel.status(),
        "torch": (True, "pure PyTorch chunked scan, any device"),
        "ref": (True, "sequential reference (slow; the test oracle)"),
    }
