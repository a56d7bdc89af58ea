"""The ``cpu`` backend: a fused C++ selective-scan kernel (mm2ct/ops/csrc/selective_scan_cpu.cpp), built on first
use with ``torch.utils.cpp_extension.load`` and cached in the torch extensions directory.

The build uses ``-march=native``; the extension's name carries a fingerprint of this CPU (model and ISA flags), so a
cache shared with another machine never loads code compiled for a different instruction set, and a hash of the
source, flags and torch, so each version of the kernel has its own cache folder (old ones can be deleted).
If the build fails (no compiler, ...) the ``auto`` backend warns once and falls back to ``torch``.
"""
from __future__ import annotations

import hashlib
import os
import platform
import re
import time
import warnings
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

from mm2ct.ops.scan_common import compute_dtype

SOURCE = Path(__file__).parent / "csrc" / "selective_scan_cpu.cpp"
CFLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]

_library: str | None = None  # path of the loaded shared library
_error: str | None = None  # why it cannot be built (set once)
_warned = False
_build_note = ""  # "built now in 31 s" or "loaded from cache", for status()


def cpu_fingerprint() -> str:
    """Short hash of the CPU model and ISA flags (x86 /proc/cpuinfo; else platform strings)."""
    info = platform.machine() + platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags", "Features")):
                info += line
                if line.startswith(("flags", "Features")):
                    break
    except OSError:
        pass
    return hashlib.sha1(info.encode()).hexdigest()[:10]


def extension_name() -> str:
    """Cache key of the build: this CPU, and a hash of the source, the flags and the torch it links against (its
    version and install folder), so checkouts and environments sharing one cache never rebuild each other's copy."""
    build = SOURCE.read_bytes() + " ".join(CFLAGS).encode() + torch.__version__.encode() + torch.__file__.encode()
    return f"mm2ct_selective_scan_cpu_{cpu_fingerprint()}_{hashlib.sha1(build).hexdigest()[:10]}"


def _build() -> str:
    """Compile (or load from the cache) the extension; it registers the ops ``torch.ops.mm2ct_scan.fwd/bwd``.
    Returns the path of the shared library."""
    from torch.utils.cpp_extension import load

    return load(name=extension_name(), sources=[str(SOURCE)], extra_cflags=CFLAGS, extra_ldflags=["-fopenmp"],
                is_python_module=False, verbose=False)


def _reason(e: Exception) -> str:
    """One line saying why the build failed: the compiler's first error if there is one."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"error:|not found|No such file|command not found", line)]
    return f"{type(e).__name__}: {(errors or lines or [''])[0]}"[:300]


def load_module():
    """The kernel's op namespace ``torch.ops.mm2ct_scan``; raises RuntimeError with the reason if it cannot be built
    (the build is attempted once per process)."""
    global _library, _error, _build_note
    if _library is None and _error is None:
        t0 = time.time()
        try:
            _library = _build()
        except Exception as e:  # noqa: BLE001 - compiler missing, build error, import error: all mean "fall back"
            _error = _reason(e)
        else:
            built = os.path.getmtime(_library) >= t0 - 1  # a fresh .so, not the cached one
            _build_note = f"built now in {time.time() - t0:.0f} s" if built else "loaded from cache"
    if _library is None:
        raise RuntimeError(f"the fused C++ selective-scan kernel is unavailable ({_error})")
    return torch.ops.mm2ct_scan


def usable(warn: bool = False) -> bool:
    """Whether the kernel builds here; with ``warn``, the first failure emits one warning (then falls back)."""
    global _warned
    try:
        load_module()
        return True
    except RuntimeError as e:
        if warn and not _warned:
            _warned = True
            warnings.warn(f"{e}; selective_scan falls back to the pure-PyTorch backend", RuntimeWarning, stacklevel=4)
        return False


def status() -> tuple[bool, str]:
    """(usable, reason) for ``available_backends``; builds the kernel if it is not built yet."""
    try:
        load_module()
    except RuntimeError as e:
        return False, str(e)
    return True, f"C++ kernel {_build_note} (cached at {_home_as_tilde(Path(_library).parent)})"


def _home_as_tilde(path: Path) -> str:
    """``path`` with the user's home folder written ``~``: the reason is printed by ``mm2ct env`` and notebooks 00
    and 02, whose executed copies are published."""
    home = Path.home()
    return "~/" + path.relative_to(home).as_posix() if home in path.parents else str(path)


class _ScanCPU(torch.autograd.Function):
    """Autograd wrapper of the fused kernel; the backward recomputes states from the forward's checkpoints."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        mod = load_module()
        out, last, ckpt = mod.fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
        ctx.delta_softplus = delta_softplus
        return out, last

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        du, ddelta, dA, dB, dC, dD, dz, ddelta_bias = load_module().bwd(
            u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, ckpt, dout.contiguous(),
            None if dlast is None else dlast.contiguous())
        return (du, ddelta, dA, dB, dC, dD if D is not None else None, dz if z is not None else None,
                ddelta_bias if delta_bias is not None else None, None)


def selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """The ``cpu`` backend (docs/method.md §6.2): shapes and semantics of ``mm2ct.ops.selective_scan``.

    Computes in float32 (float64 if an input is float64); B/C are handed to the kernel time-major:
    (batch, N, L) -> (batch, 1, L, N), (batch, G, N, L) -> (batch, G, L, N); (dim, N) stays.
    """
    ct = compute_dtype(u, delta, A, B, C, D, z, delta_bias)

    def prep(t):
        return None if t is None else t.to(ct).contiguous()

    def time_major(M):
        if M.dim() == 3:
            M = M.unsqueeze(1)  # (batch, 1, N, L)
        return prep(M.transpose(-1, -2) if M.dim() == 4 else M)  # (batch, G, L, N) or (dim, N)

    out, last = _ScanCPU.apply(prep(u), prep(delta), prep(A), time_major(B), time_major(C), prep(D), prep(z),
                               prep(delta_bias), bool(delta_softplus))
    out = out.to(u.dtype)
    return (out, last) if return_last_state else out
